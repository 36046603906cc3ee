-- On plain PostgreSQL there is no gp_segment_configuration catalog: create a
-- table with Cloudberry's columns and types so the same SQL works on both.
-- On Cloudberry the catalog pg_catalog.gp_segment_configuration is used as is.
DO $compat$
BEGIN
    IF pg_catalog.to_regclass('pg_catalog.gp_segment_configuration') IS NULL THEN
        CREATE TABLE gp_segment_configuration (
            dbid           smallint NOT NULL PRIMARY KEY,
            content        smallint NOT NULL,
            role           "char"   NOT NULL DEFAULT 'p',
            preferred_role "char"   NOT NULL DEFAULT 'p',
            mode           "char"   NOT NULL DEFAULT 'n',
            status         "char"   NOT NULL DEFAULT 'u',
            port           integer  NOT NULL,
            hostname       text,
            address        text,
            datadir        text
        );
        COMMENT ON TABLE gp_segment_configuration IS
            'One row per instance, as Cloudberry''s catalog of the same name; read by ic_proxy_addresses_generate()';
        -- pg_dump keeps its rows.
        PERFORM pg_catalog.pg_extension_config_dump('gp_segment_configuration', '');
    END IF;
END
$compat$;
