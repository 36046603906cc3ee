//! The peer directory: the slot of every other instance in the map, by
//! dbid. Reloads apply a diff of the map to it (unchanged peers are never
//! cut); backend sessions, the peer listener and the runtime look slots up
//! in it. It owns no link itself: each slot runs its own.

use std::collections::HashMap;
use std::sync::Arc;

use super::PeerSlot;
use crate::address_map::{MapDiff, PeerAddr};
use crate::context::{Ctx, NO_CONTENT};
use crate::status::PeerStats;
use crate::sync::RwLock;

#[derive(Default)]
pub(crate) struct PeerDirectory {
    slots: RwLock<HashMap<u16, Arc<PeerSlot>>>,
}

impl PeerDirectory {
    pub fn get(&self, dbid: u16) -> Option<Arc<PeerSlot>> {
        self.slots.read().get(&dbid).cloned()
    }

    pub fn slots(&self) -> Vec<Arc<PeerSlot>> {
        self.slots.read().values().cloned().collect()
    }

    /// Brings the slots in line with a new map: `diff` against the map in
    /// force, or, when this instance's own entry changed (`restart`), every
    /// slot anew since every role may change. Sets this instance's content
    /// (none while `me` is not in the map: no slot then). Returns the
    /// status rows of the slots now in place.
    pub fn apply(
        &self,
        ctx: &Arc<Ctx>,
        diff: &MapDiff,
        restart: bool,
        new: &crate::address_map::AddressMap,
        me: Option<&PeerAddr>,
    ) -> Vec<Arc<PeerStats>> {
        let mut slots = self.slots.write();
        let stop = |dbid: u16, slots: &mut HashMap<u16, Arc<PeerSlot>>| {
            if let Some(slot) = slots.remove(&dbid) {
                log::info!("ic-proxy: peer dbid {dbid} removed from the map");
                slot.token.cancel();
            }
        };
        if restart {
            for dbid in slots.keys().copied().collect::<Vec<_>>() {
                stop(dbid, &mut slots);
            }
        } else {
            for r in &diff.removed {
                stop(r.dbid, &mut slots);
            }
            for (o, _) in &diff.changed {
                stop(o.dbid, &mut slots);
            }
        }
        let my_dbid = ctx.settings.dbid;
        let my_content = match me {
            Some(e) => i32::from(e.content),
            None => {
                log::warn!(
                    "ic-proxy: this instance's dbid {my_dbid} is not in the address map; no peer traffic until it is"
                );
                NO_CONTENT
            }
        };
        ctx.policy.set_my_content(my_content);
        if my_content != NO_CONTENT {
            let to_start: Vec<&PeerAddr> = if restart {
                new.entries().iter().filter(|e| e.dbid != my_dbid).collect()
            } else {
                diff.added
                    .iter()
                    .chain(diff.changed.iter().map(|(_, n)| n))
                    .collect()
            };
            for e in to_start {
                slots.insert(e.dbid, PeerSlot::start(ctx, e.clone(), my_content as i16));
            }
        }
        slots.values().map(|s| s.stats.clone()).collect()
    }
}
