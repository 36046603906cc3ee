-- The ic_proxy.* settings as a user sees them: defaults, and bad values
-- refused with the reason and the fix.

-- Every setting's default (this server sets none of them).
SELECT name, setting, unit, context, vartype
  FROM pg_settings WHERE name LIKE 'ic\_proxy.%' ORDER BY name;
SHOW ic_proxy.addresses;
SHOW ic_proxy.dbid;
SHOW ic_proxy.dialect;
SHOW ic_proxy.early_packet_cache_size;
SHOW ic_proxy.early_packet_ttl;
SHOW ic_proxy.flow_ack_interval;
SHOW ic_proxy.flow_pause_threshold;
SHOW ic_proxy.flow_resume_threshold;
SHOW ic_proxy.log_verbosity;
SHOW ic_proxy.max_packet_size;
SHOW ic_proxy.max_status_entries;
SHOW ic_proxy.peer_auth_secret_file;
SHOW ic_proxy.peer_queue_size;
SHOW ic_proxy.peer_retry_interval;
SHOW ic_proxy.socket_dir;
SHOW ic_proxy.tls;
SHOW ic_proxy.tls_verify;
SHOW ic_proxy.worker_threads;

-- The map in force: none.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS cloudberry_ic_proxy;
CREATE EXTENSION cloudberry_ic_proxy;
RESET client_min_messages;
SELECT * FROM ic_proxy_addresses();

-- ALTER SYSTEM checks the value before writing postgresql.auto.conf.
-- After each error, LAST_ERROR_SQLSTATE shows its SQLSTATE (VERBOSITY
-- verbose would also print guc.c's line number, which changes between
-- PostgreSQL minor releases).
ALTER SYSTEM SET ic_proxy.addresses = '1:-1:cdw:7000,2:0:sdw1:99999';
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ALTER SYSTEM SET ic_proxy.addresses = '1:-1:cdw:7000, 2:x:sdw1:99999, 1:1:cdw:7000';
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ALTER SYSTEM SET ic_proxy.addresses = '''1:-1:cdw:7000''';
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ALTER SYSTEM SET ic_proxy.socket_dir = 'tmp/ic_proxy';
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ALTER SYSTEM SET ic_proxy.peer_auth_secret_file = 'secret.txt';
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ALTER SYSTEM SET ic_proxy.tls_cert_file = 'tls/proxy.pem';
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ALTER SYSTEM SET ic_proxy.tls_key_file = 'proxy.key';
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ALTER SYSTEM SET ic_proxy.tls_ca_file = 'ca.pem';
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ALTER SYSTEM SET ic_proxy.tls = 'maybe';
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ALTER SYSTEM SET ic_proxy.tls_verify = 'none';
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ALTER SYSTEM SET ic_proxy.socket_dir = '/tmp/a-directory-name-that-is-far-too-long-to-hold-a-unix-socket-of-the-proxy';
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ALTER SYSTEM SET ic_proxy.dialect = 'd';
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ALTER SYSTEM SET ic_proxy.max_packet_size = 511;
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ALTER SYSTEM SET ic_proxy.max_packet_size = 65472;
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ALTER SYSTEM SET ic_proxy.dbid = 32768;
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ALTER SYSTEM SET ic_proxy.worker_threads = 0;
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ALTER SYSTEM SET ic_proxy.max_status_entries = 15;
\echo SQLSTATE :LAST_ERROR_SQLSTATE
-- The flow-control settings only work together; each is checked against
-- the others (in force: 100 / 30 / 10).
ALTER SYSTEM SET ic_proxy.flow_resume_threshold = 150;
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ALTER SYSTEM SET ic_proxy.flow_pause_threshold = 30;
\echo SQLSTATE :LAST_ERROR_SQLSTATE
ALTER SYSTEM SET ic_proxy.flow_ack_interval = 32;
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT pg_read_file('postgresql.auto.conf') !~ 'ic_proxy' AS auto_conf_untouched;

-- The map is read at reload; a session cannot change it.
SET ic_proxy.addresses = '1:-1:cdw:7000';
-- The identity and wire settings need a restart.
SET ic_proxy.dialect = 'b';
SET ic_proxy.dbid = 2;

-- The ic_proxy prefix is reserved: a misspelt name is an error, not a new
-- placeholder that is silently ignored.
SET ic_proxy.adresses = 'x';
ALTER SYSTEM SET ic_proxy.adresses = 'x';
SHOW ic_proxy.adresses;

DROP EXTENSION cloudberry_ic_proxy;
