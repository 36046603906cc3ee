-- gp_segment_configuration on plain PostgreSQL (the extension's compatible
-- table) and the address map generated from it.
-- After each error, LAST_ERROR_SQLSTATE shows its SQLSTATE (VERBOSITY
-- verbose would also print the source line, which changes with every edit).
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS cloudberry_ic_proxy;
CREATE EXTENSION cloudberry_ic_proxy;
RESET client_min_messages;

-- Cloudberry's columns and types.
\d gp_segment_configuration

-- No instance yet: nothing to map.
SELECT ic_proxy_addresses_generate(-1000);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT * FROM ic_proxy_addresses_preview(-1000);
\echo SQLSTATE :LAST_ERROR_SQLSTATE

-- The documentation's cluster: a coordinator, two segment hosts with two
-- primaries and two mirrors, a standby; rows not in dbid order, and the
-- address column differs from the hostname: the address is what is mapped.
INSERT INTO gp_segment_configuration
    (dbid, content, role, preferred_role, mode, status, port, hostname, address, datadir)
VALUES
    (1, -1, 'p', 'p', 'n', 'u', 36432, 'cdw',  '192.168.180.50', '/data/coordinator/gpseg-1'),
    (6, -1, 'm', 'm', 's', 'u', 36433, 'scdw', '192.168.180.51', '/data/standby/gpseg-1'),
    (3,  1, 'p', 'p', 's', 'u', 36001, 'sdw1', '192.168.180.54', '/data/primary/gpseg1'),
    (2,  0, 'p', 'p', 's', 'u', 36000, 'sdw1', '192.168.180.54', '/data/primary/gpseg0'),
    (4,  0, 'm', 'm', 's', 'u', 36002, 'sdw2', '192.168.180.55', '/data/mirror/gpseg0'),
    (5,  1, 'm', 'm', 's', 'u', 36003, 'sdw2', '192.168.180.55', '/data/mirror/gpseg1');

SELECT ic_proxy_addresses_generate(-1000);
SELECT ic_proxy_addresses_generate(0);
SELECT ic_proxy_addresses_generate(1000);
SELECT * FROM ic_proxy_addresses_preview(-1000);
-- The largest delta that keeps every port in range (dbid 6: 36433 + 29102 = 65535).
SELECT * FROM ic_proxy_addresses_preview(29102);

-- The generated map passes its own check.
SELECT count(*) AS problems FROM ic_proxy_addresses_check(ic_proxy_addresses_generate(-1000));

-- A delta that puts a port out of range names the instance and the sum.
SELECT ic_proxy_addresses_generate(29103);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT * FROM ic_proxy_addresses_preview(-36000);
\echo SQLSTATE :LAST_ERROR_SQLSTATE

-- Two instances on one host with the same proxy port.
UPDATE gp_segment_configuration SET port = 36000 WHERE dbid = 3;
SELECT ic_proxy_addresses_generate(-1000);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
SELECT * FROM ic_proxy_addresses_preview(-1000);
\echo SQLSTATE :LAST_ERROR_SQLSTATE
UPDATE gp_segment_configuration SET port = 36001 WHERE dbid = 3;

-- A row without an address.
UPDATE gp_segment_configuration SET address = NULL WHERE dbid = 5;
SELECT ic_proxy_addresses_generate(-1000);
\echo SQLSTATE :LAST_ERROR_SQLSTATE

DROP EXTENSION cloudberry_ic_proxy;
