-- ic_proxy_addresses_check(map): one row per problem, no rows when valid.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS cloudberry_ic_proxy;
CREATE EXTENSION cloudberry_ic_proxy;
RESET client_min_messages;

-- Valid maps: Cloudberry's syntax, spaces after commas, host names, IPv4,
-- bracketed IPv6, one trailing comma; and the empty map.
SELECT * FROM ic_proxy_addresses_check('1:-1:192.168.180.50:35432,2:0:192.168.180.54:35000');
SELECT * FROM ic_proxy_addresses_check('1:-1:cdw:7000, 2:0:sdw1:7002, 3:1:sdw2.example.com:7003');
SELECT * FROM ic_proxy_addresses_check('1:-1:[::1]:7000,2:0:[fe80::1]:7001,3:1:127.0.0.1:7002,');
SELECT * FROM ic_proxy_addresses_check('');

-- Every kind of problem, each naming the entry by position and text.
SELECT * FROM ic_proxy_addresses_check('''1:-1:cdw:7000''');
SELECT * FROM ic_proxy_addresses_check('1:-1:cdw:7000,,2:0:sdw1:7002');
SELECT * FROM ic_proxy_addresses_check('1:-1:cdw');
SELECT * FROM ic_proxy_addresses_check('1:-1:cdw:7000:extra');
SELECT * FROM ic_proxy_addresses_check('1:-1:[::1:7000');
SELECT * FROM ic_proxy_addresses_check('x:-1:cdw:7000');
SELECT * FROM ic_proxy_addresses_check(':-1:cdw:7000');
SELECT * FROM ic_proxy_addresses_check('1:+1:cdw:7000');
SELECT * FROM ic_proxy_addresses_check('1:-1:cdw:70a0');
-- dbid and content are smallint columns of gp_segment_configuration:
-- dbid 1..32767, content -1..32767.
SELECT * FROM ic_proxy_addresses_check('0:-1:cdw:7000');
SELECT * FROM ic_proxy_addresses_check('32767:-1:cdw:7000,2:32767:sdw1:7002');
SELECT * FROM ic_proxy_addresses_check('40000:-1:cdw:7000');
SELECT * FROM ic_proxy_addresses_check('65536:-1:cdw:7000');
SELECT * FROM ic_proxy_addresses_check('1:-2:cdw:7000');
SELECT * FROM ic_proxy_addresses_check('1:32768:cdw:7000');
SELECT * FROM ic_proxy_addresses_check('1:-1:cdw:0');
SELECT * FROM ic_proxy_addresses_check('1:-1:cdw:99999');
SELECT * FROM ic_proxy_addresses_check('1:-1:cdw:99999999999999999999999');
SELECT * FROM ic_proxy_addresses_check('1:-1::7000');
SELECT * FROM ic_proxy_addresses_check('1:-1:cdw/1:7000');
-- Host names: at most 253 characters (one trailing dot not counted) in
-- dot-separated labels of at most 63.
SELECT * FROM ic_proxy_addresses_check('1:-1:' || repeat('abcdefghi.', 25) || 'abc:7000,2:0:' || repeat('abcdefghi.', 25) || 'abc.:7001');
SELECT * FROM ic_proxy_addresses_check('1:-1:' || repeat('a', 63) || '.example.com:7000');
SELECT position, length(entry) AS entry_length, problem FROM ic_proxy_addresses_check('1:-1:' || repeat('abcdefghi.', 25) || 'abcd:7000');
SELECT position, length(entry) AS entry_length, problem FROM ic_proxy_addresses_check('1:-1:sdw1.' || repeat('a', 300) || '.example.com:7000');
SELECT * FROM ic_proxy_addresses_check('1:-1:192.168.1.300:7000');
SELECT * FROM ic_proxy_addresses_check('1:-1:[sdw1]:7000');
SELECT * FROM ic_proxy_addresses_check('1:-1:fe80::1:7000');
SELECT * FROM ic_proxy_addresses_check('1:-1:cdw:7000,1:0:sdw1:7002');
SELECT * FROM ic_proxy_addresses_check('1:-1:cdw:7000,2:0:CDW:7000');
SELECT * FROM ic_proxy_addresses_check('1:-1:sdw1:7002,2:0:SDW1.:7002,3:1:sdw1.:7002');
SELECT * FROM ic_proxy_addresses_check('1:-1:[::1]:7000,2:0:[0:0::1]:7000');

-- Several problems at once: all of them, in entry order, nothing skipped
-- after the first bad entry (the C proxy ignores the rest of the value).
SELECT * FROM ic_proxy_addresses_check('1:-1:cdw:7000, 2:x:sdw1:99999, 3:1:sdw2, 1:2:cdw:7000');

-- A problem quotes at most 64 characters of an entry or a host, so a
-- megabyte of bad entry gives a short message; the entry column keeps it whole.
SELECT position, length(entry) AS entry_length, problem FROM ic_proxy_addresses_check(repeat('x', 1048576) || ':-1:cdw:7000');

DROP EXTENSION cloudberry_ic_proxy;
