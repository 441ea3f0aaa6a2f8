-- fidelity.sql: data-fidelity fixture for pg_dbmigrator tests.
-- Load with: psql -X -v ON_ERROR_STOP=1 -f fidelity.sql <fresh UTF8 database>  (as superuser)
-- Deterministic: no random(), now(), gen_random_uuid(); two loads give identical content.
-- Every table has a PRIMARY KEY except fidelity.no_key (REPLICA IDENTITY FULL, duplicate rows).
-- Every FK has ON UPDATE CASCADE, so tests may UPDATE any primary key.

-- Pin session settings so that literals parse the same way on every server.
SET client_encoding = 'UTF8';
SET TimeZone = 'UTC';
SET DateStyle = 'ISO, YMD';
SET IntervalStyle = 'postgres';
SET lc_monetary = 'C';
SET extra_float_digits = 3;
SET xmloption = content;

-- ===== 1. Extensions (schema public) =====
CREATE EXTENSION IF NOT EXISTS hstore;
CREATE EXTENSION IF NOT EXISTS citext;

CREATE SCHEMA fidelity;

-- ===== 2. Types =====
CREATE TYPE fidelity.mood AS ENUM ('happy', 'it''s ok', 'sad', 'with space', 'Ünïcode');
CREATE DOMAIN fidelity.short_text AS text CHECK (length(VALUE) <= 10);
CREATE TYPE fidelity.pair AS (k text, v int);

-- Helper: cycle through a list of literal values (row g gets vals[1 + g % n]).
CREATE FUNCTION fidelity.pick(vals text[], i int) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$ SELECT vals[1 + i % cardinality(vals)] $$;

CREATE TABLE fidelity.all_types (
    id          int PRIMARY KEY,
    c_int2      int2,          c_int4      int4,          c_int8      int8,
    c_numeric   numeric,       c_real      real,          c_float8    float8,
    c_money     money,         c_text      text,          c_char      char(5),
    c_varchar   varchar(10),   c_bytea     bytea,         c_date      date,
    c_ts        timestamp,     c_tstz      timestamptz,   c_time      time,
    c_timetz    timetz,        c_interval  interval,      c_uuid      uuid,
    c_json      json,          c_jsonb     jsonb,         c_xml       xml,
    c_inet      inet,          c_cidr      cidr,          c_macaddr   macaddr,
    c_macaddr8  macaddr8,      c_bit       bit(8),        c_varbit    varbit,
    c_intarr    int[],         c_textarr   text[],        c_int4range int4range,
    c_tstzrange tstzrange,     c_numrange  numrange,      c_enum      fidelity.mood,
    c_domain    fidelity.short_text,       c_pair      fidelity.pair,
    c_hstore    hstore,        c_citext    citext,        c_point     point,
    c_line      line,          c_lseg      lseg,          c_box       box,
    c_path      path,          c_polygon   polygon,       c_circle    circle,
    c_tsvector  tsvector,      c_tsquery   tsquery,       c_bool      boolean,
    c_oid       oid
);

-- Row 1: all NULLs except the key.
INSERT INTO fidelity.all_types (id) VALUES (1);

-- Rows 2..30: each column cycles through its edge values.
-- timestamptz extremes are kept well inside the legal range so that output in
-- any server TimeZone can be read back.
INSERT INTO fidelity.all_types
SELECT g,
  fidelity.pick(ARRAY['-32768', '0', '32767', '-1'], g)::int2,
  fidelity.pick(ARRAY['-2147483648', '0', '2147483647', '42'], g)::int4,
  fidelity.pick(ARRAY['-9223372036854775808', '0', '9223372036854775807'], g)::int8,
  fidelity.pick(ARRAY['NaN', 'Infinity', '-Infinity', '0', '-0.000001', '0.10',
                      '123456789012345678901234567890.123456789012345678901234567890',
                      repeat('9', 1000) || '.' || repeat('1', 1000)], g)::numeric,
  fidelity.pick(ARRAY['NaN', 'Infinity', '-Infinity', '-0', '0.1', '0.33333334',
                      '16777217', '3.4028235e38', '1.4e-45', '1.17549435e-38'], g)::real,
  fidelity.pick(ARRAY['NaN', 'Infinity', '-Infinity', '-0', '0.1', '0.3333333333333333',
                      '1.7976931348623157e308', '5e-324', '2.2250738585072014e-308',
                      '9007199254740993'], g)::float8,
  fidelity.pick(ARRAY['0', '-92233720368547758.08', '92233720368547758.07', '12.34'], g)::money,
  fidelity.pick(ARRAY[E'tab\there', E'line1\nline2', E'cr\rlf\r\n', E'back\\slash\\\\',
                      'single''quote', 'double"quote', 'Ünïcödé 日本語 ñ', '😀 emoji 👍🏽',
                      '', E'\\N', 'NULL', ' leading and trailing ', E'\\x00', E',;|{}()[]'], g),
  fidelity.pick(ARRAY['ab', 'abcde', '', 'ü'], g)::char(5),
  fidelity.pick(ARRAY['', 'x', 'ten chars!', 'trail  '], g)::varchar(10),
  fidelity.pick(ARRAY['\x', '\x00', '\x000100ff00', '\x5c27220d0a', '\xdeadbeef'], g)::bytea,
  fidelity.pick(ARRAY['infinity', '-infinity', '0044-03-15 BC', '4714-11-24 BC',
                      '2000-02-29', '5874897-12-31', '1970-01-01'], g)::date,
  fidelity.pick(ARRAY['infinity', '-infinity', '4714-11-24 00:00:00 BC',
                      '294276-12-31 23:59:59.999999', '2024-02-29 12:34:56.789012',
                      '0001-01-01 00:00:00 BC'], g)::timestamp,
  fidelity.pick(ARRAY['infinity', '-infinity', '2024-03-31 01:59:59.999999+02',
                      '1900-01-01 00:00:00-05:17:32', '4000-01-01 00:00:00 BC+00',
                      '200000-01-01 00:00:00+00'], g)::timestamptz,
  fidelity.pick(ARRAY['00:00:00', '23:59:59.999999', '24:00:00', '12:34:56.5'], g)::time,
  fidelity.pick(ARRAY['00:00:00+00', '24:00:00-15:59', '12:34:56.123456+15:59',
                      '01:02:03+05:30'], g)::timetz,
  fidelity.pick(ARRAY['0', '1 year 2 mons 3 days 04:05:06.789', '-1 days +01:00',
                      '1 mon -1 days', '178000000 years', '-178000000 years',
                      '-00:00:00.000001'], g)::interval,
  md5(g::text)::uuid,
  fidelity.pick(ARRAY['{"a":1, "a":2}', E'  [1, 2 ,\n {"b" : null}]  ', '"nul \u0000 escape"',
                      'null', '1e400', '{"emoji":"😀", "esc":"\"\\\/"}', '[]'], g)::json,
  fidelity.pick(ARRAY['{"b":1, "a":[1, 2, {"c":null}]}', '1.000', '"\u00e9"', '[]', '{}',
                      'null', '{"a":1, "a":2}', '123456789012345678901234567890.5'], g)::jsonb,
  fidelity.pick(ARRAY['<doc a="1"><item>x &amp; y</item><!-- c --><e/></doc>',
                      'plain text &lt; content', '<a>Ünï</a><b/>'], g)::xml,
  fidelity.pick(ARRAY['192.168.1.1/24', '::1', '10.0.0.1', '2001:db8::ff/64',
                      '::ffff:1.2.3.4'], g)::inet,
  fidelity.pick(ARRAY['10.0.0.0/8', '2001:db8::/32', '192.168.0.1/32', '0.0.0.0/0'], g)::cidr,
  fidelity.pick(ARRAY['08:00:2b:01:02:03', '00:00:00:00:00:00', 'ff:ff:ff:ff:ff:ff'], g)::macaddr,
  fidelity.pick(ARRAY['08:00:2b:01:02:03:04:05', '00:00:00:ff:fe:00:00:00'], g)::macaddr8,
  fidelity.pick(ARRAY['10101010', '00000000', '11111111'], g)::bit(8),
  fidelity.pick(ARRAY['', '1', '1011', '0000000000000000001'], g)::varbit,
  fidelity.pick(ARRAY['{1,NULL,3}', '{}', '[0:2]={1,2,3}', '{NULL}', '{{1,2},{3,4}}'], g)::int[],
  fidelity.pick(ARRAY['{{a,b},{"c d","e\"f"}}', '{{NULL,""},{"NULL",x}}', '{}',
                      '{"back\\\\slash","comma,brace}"}'], g)::text[],
  fidelity.pick(ARRAY['empty', '[1,10)', '(,5]', '[3,)', '(,)'], g)::int4range,
  fidelity.pick(ARRAY['empty', '(,)', '[2024-01-01 00:00+00,infinity)',
                      '[-infinity,2020-01-01 00:00+00]', '(2024-01-01 00:00+00,)'], g)::tstzrange,
  fidelity.pick(ARRAY['empty', '[0.1,0.2]', '(,)', '(-1.5,)'], g)::numrange,
  fidelity.pick(ARRAY['happy', 'it''s ok', 'sad', 'with space', 'Ünïcode'], g)::fidelity.mood,
  fidelity.pick(ARRAY['', 'short', 'ten chars!'], g)::fidelity.short_text,
  fidelity.pick(ARRAY['(a,1)', '(,)', '("a,b",-1)', '("\"q\"",0)', '("",)'], g)::fidelity.pair,
  fidelity.pick(ARRAY['a=>1, b=>NULL, "c d"=>"x\"y"', '', '"k=>v"=>"it''s"',
                      '"NULL"=>"NULL"'], g)::hstore,
  fidelity.pick(ARRAY['MiXeD Case', 'ÄÖÜ', ''], g)::citext,
  fidelity.pick(ARRAY['(1.5,-2)', '(0.1,-0)', '(1e300,-1e-300)'], g)::point,
  fidelity.pick(ARRAY['{1,-1,0}', '{0,1,0.1}'], g)::line,
  fidelity.pick(ARRAY['[(0,0),(1,1)]', '[(0.1,0.2),(-3,4)]'], g)::lseg,
  fidelity.pick(ARRAY['(1,1),(0,0)', '(0.1,0.2),(0.3,0.4)'], g)::box,
  fidelity.pick(ARRAY['[(0,0),(1,1),(2,0)]', '((0,0),(1,1),(2,0))'], g)::path,
  fidelity.pick(ARRAY['((0,0),(1,0),(1,1))', '((0.1,0.1),(2,0),(2,2),(0,2))'], g)::polygon,
  fidelity.pick(ARRAY['<(0,0),1.5>', '<(0.1,-0.1),0>'], g)::circle,
  fidelity.pick(ARRAY['a fat cat:1,3A sat:2B', $$'it''s' 'a b' Ünï:5$$, ''], g)::tsvector,
  fidelity.pick(ARRAY['fat & (rat | cat)', '!x <-> y:*', $$'it''s' <2> b:AB$$], g)::tsquery,
  fidelity.pick(ARRAY['true', 'false', NULL], g)::boolean,
  fidelity.pick(ARRAY['0', '4294967295', '1259'], g)::oid
FROM generate_series(2, 30) AS g;

-- ===== 3. Shapes =====

-- Odd identifiers: spaces, quotes, dots, mixed case, reserved words, non-ASCII.
CREATE SCHEMA "Ünïcode Schema";
CREATE TABLE "Ünïcode Schema"."Tab.le ""q"" Name" (
    "Select"         int PRIMARY KEY,
    "from"           text,
    "col with space" text,
    "Ωmega"          numeric,
    "MixedCase"      boolean
);
INSERT INTO "Ünïcode Schema"."Tab.le ""q"" Name" VALUES
    (1, 'where', 'a b c', 3.14, true),
    (2, 'ORDER BY', E'tab\there', -1, false),
    (3, NULL, NULL, NULL, NULL);
COMMENT ON TABLE "Ünïcode Schema"."Tab.le ""q"" Name" IS 'Table with an awkward name';
COMMENT ON COLUMN "Ünïcode Schema"."Tab.le ""q"" Name"."Ωmega" IS 'Non-ASCII column; it''s commented';

-- Generated (STORED) column and an identity column GENERATED ALWAYS (not the key,
-- so the key can be updated).
CREATE TABLE fidelity.computed (
    id     int PRIMARY KEY,
    a      int NOT NULL,
    b      int NOT NULL,
    total  int GENERATED ALWAYS AS (a + b) STORED,
    seq_no bigint GENERATED ALWAYS AS IDENTITY (START WITH 100 INCREMENT BY 10)
);
INSERT INTO fidelity.computed (id, a, b)
SELECT g, g, g * 10 FROM generate_series(1, 5) AS g;

-- No primary key: REPLICA IDENTITY FULL and duplicate rows.
CREATE TABLE fidelity.no_key (a int, b text);
ALTER TABLE fidelity.no_key REPLICA IDENTITY FULL;
INSERT INTO fidelity.no_key VALUES
    (1, 'dup'), (1, 'dup'), (1, 'dup'), (2, 'other'), (NULL, NULL), (NULL, NULL);

-- Partitioned table (LIST) with a DEFAULT partition; rows in every partition.
CREATE TABLE fidelity.orders (
    region text NOT NULL,
    id     int  NOT NULL,
    amount numeric(12,2),
    PRIMARY KEY (region, id)
) PARTITION BY LIST (region);
CREATE TABLE fidelity.orders_eu PARTITION OF fidelity.orders FOR VALUES IN ('eu');
CREATE TABLE fidelity.orders_us PARTITION OF fidelity.orders FOR VALUES IN ('us');
CREATE TABLE fidelity.orders_other PARTITION OF fidelity.orders DEFAULT;
INSERT INTO fidelity.orders
SELECT (ARRAY['eu', 'us', 'apac', 'latam'])[1 + g % 4], g, g * 1.25
FROM generate_series(1, 20) AS g;

-- Inheritance: parent + child with an extra column, rows in both.
CREATE TABLE fidelity.vehicle (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE fidelity.car (doors int NOT NULL, PRIMARY KEY (id)) INHERITS (fidelity.vehicle);
INSERT INTO fidelity.vehicle VALUES (1, 'bike'), (2, 'scooter');
INSERT INTO fidelity.car VALUES (10, 'sedan', 4), (11, 'coupe', 2);

-- Foreign keys with ON DELETE CASCADE (and ON UPDATE CASCADE).
CREATE TABLE fidelity.parent (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE fidelity.child (
    id        int PRIMARY KEY,
    parent_id int NOT NULL REFERENCES fidelity.parent (id)
                  ON DELETE CASCADE ON UPDATE CASCADE,
    note      text
);
INSERT INTO fidelity.parent SELECT g, 'parent ' || g FROM generate_series(1, 3) AS g;
INSERT INTO fidelity.child SELECT g, 1 + g % 3, 'child ' || g FROM generate_series(1, 9) AS g;
COMMENT ON TABLE fidelity.child IS 'Children; FK cascades on delete and update';
COMMENT ON COLUMN fidelity.child.parent_id IS 'References fidelity.parent(id)';

-- View and materialized view.
CREATE VIEW fidelity.v_child_parent AS
    SELECT c.id, c.note, p.name AS parent_name
    FROM fidelity.child c JOIN fidelity.parent p ON p.id = c.parent_id;
CREATE MATERIALIZED VIEW fidelity.mv_child_counts AS
    SELECT parent_id, count(*) AS n FROM fidelity.child GROUP BY parent_id;

-- plpgsql function + BEFORE INSERT trigger that fills a column (only when NULL,
-- so restores/replication that carry the value are unaffected).
CREATE TABLE fidelity.audited (id int PRIMARY KEY, payload text NOT NULL, label text);
CREATE FUNCTION fidelity.fill_label() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.label IS NULL THEN
        NEW.label := upper(NEW.payload) || '#' || NEW.id;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER audited_fill_label BEFORE INSERT ON fidelity.audited
    FOR EACH ROW EXECUTE FUNCTION fidelity.fill_label();
INSERT INTO fidelity.audited (id, payload) VALUES (1, 'alpha'), (2, 'beta');
INSERT INTO fidelity.audited VALUES (3, 'gamma', 'explicit label');

-- Free-standing sequences: one advanced with setval, one never called.
CREATE SEQUENCE fidelity.seq_used START 1;
SELECT setval('fidelity.seq_used', 42, true);
CREATE SEQUENCE fidelity.seq_unused START 7 INCREMENT 3;

-- Large object with a fixed OID.
SELECT lo_from_bytea(515151, '\x00010203'::bytea);
COMMENT ON LARGE OBJECT 515151 IS 'fidelity large object';

-- TOASTed value: ~200 KB of hex text (out-of-line storage).
CREATE TABLE fidelity.toasted (id int PRIMARY KEY, small text, big text);
INSERT INTO fidelity.toasted
SELECT 1, 'small', string_agg(md5(g::text), '' ORDER BY g) FROM generate_series(1, 6250) AS g;
INSERT INTO fidelity.toasted VALUES (2, 'tiny', 'not toasted');
