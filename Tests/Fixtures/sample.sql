-- pg_dbmigrator test fixture
--
-- Load into a fresh, empty database as a superuser:
--   psql -v ON_ERROR_STOP=1 -f sample.sql <db>
-- Core PostgreSQL only (15+), no roles, no \connect, deterministic content
-- (no random()/now()), so two loads produce identical data.

SET client_min_messages = warning;
SET search_path = public;

------------------------------------------------------------------------------
-- Schemas
------------------------------------------------------------------------------
CREATE SCHEMA sales;
CREATE SCHEMA "Audit Log";
CREATE SCHEMA inventory;

------------------------------------------------------------------------------
-- Types: enum (one label contains a quote), domain, composite
------------------------------------------------------------------------------
CREATE TYPE public.order_status AS ENUM ('pending', 'shipped', 'customer''s hold', 'cancelled');
CREATE DOMAIN public.positive_money AS numeric(12,2) CHECK (VALUE >= 0);
CREATE TYPE public.address AS (street text, city text, zip text);

------------------------------------------------------------------------------
-- Free-standing sequences: one advanced with setval, one never called
------------------------------------------------------------------------------
CREATE SEQUENCE public.invoice_no_seq START 1000 INCREMENT 5;
SELECT setval('public.invoice_no_seq', 4242, true);
CREATE SEQUENCE inventory.unused_seq START 7;

------------------------------------------------------------------------------
-- Functions (bodies fully schema-qualified: pg_restore runs with search_path = '')
------------------------------------------------------------------------------
CREATE FUNCTION public.customer_label(p_name text, p_city text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  RETURN p_name || ' (' || coalesce(p_city, 'unknown') || ')';
END
$$;

------------------------------------------------------------------------------
-- public.customers: bigserial PK, composite, inet, arrays with NULLs, jsonb
------------------------------------------------------------------------------
CREATE TABLE public.customers (
  id          bigserial PRIMARY KEY,
  email       text NOT NULL,
  name        text NOT NULL,
  city        text,
  address     public.address,
  is_active   boolean NOT NULL DEFAULT true,
  signup_date date NOT NULL,
  last_login  timestamptz,
  ip          inet,
  tags        text[],
  prefs       jsonb,
  CONSTRAINT customers_email_chk CHECK (email LIKE '%@%')
);
CREATE UNIQUE INDEX customers_email_lower_key ON public.customers (lower(email));
CREATE INDEX customers_city_idx ON public.customers (city);
COMMENT ON TABLE public.customers IS 'Customers; the ''main'' table – Zürich HQ';
COMMENT ON COLUMN public.customers.email IS 'Unique (case-insensitive) e-mail address';

INSERT INTO public.customers (email, name, city, address, is_active, signup_date,
                              last_login, ip, tags, prefs)
SELECT 'user' || g || '@example.com',
       'Customer ' || g,
       (ARRAY['Zürich', '日本', 'New York', 'São Paulo', NULL])[1 + g % 5],
       CASE WHEN g % 11 = 0 THEN NULL
            ELSE ROW('Street "' || g || '", apt ' || g % 9, 'City, ' || g % 13,
                     lpad(g::text, 5, '0'))::public.address END,
       g % 7 <> 0,
       date '2020-01-01' + g,
       CASE WHEN g % 3 = 0 THEN NULL
            ELSE timestamptz '2023-01-01 00:00:00+00' + g * interval '37 min 13.5 sec' END,
       CASE WHEN g % 2 = 0 THEN ('10.' || g / 256 || '.' || g % 256 || '.1')::inet
            ELSE ('2001:db8::' || to_hex(g) || '/64')::inet END,
       CASE g % 4 WHEN 0 THEN NULL
                  WHEN 1 THEN ARRAY['vip', NULL, 'tag ' || g % 10]
                  WHEN 2 THEN '{}'::text[]
                  ELSE ARRAY['a,b', 'quote"d', E'back\\slash'] END,
       jsonb_build_object('newsletter', g % 2 = 0, 'lang', (ARRAY['de', 'ja', 'en'])[1 + g % 3],
                          'score', g * 1.5, 'nested', jsonb_build_array(g, NULL, 'x'))
FROM generate_series(1, 2000) AS g;

------------------------------------------------------------------------------
-- inventory.products: serial PK, unique constraint, tricky text, bytea, float8
------------------------------------------------------------------------------
CREATE TABLE inventory.products (
  id          serial PRIMARY KEY,
  sku         text NOT NULL CONSTRAINT products_sku_key UNIQUE,
  name        text NOT NULL,
  description text,
  shelf       int2,
  price       numeric(10,2) NOT NULL CHECK (price > 0),
  cost        numeric,
  weight_kg   float8,
  thumbnail   bytea,
  dims        int4[]
);

INSERT INTO inventory.products (sku, name, description, shelf, price, cost, weight_kg, thumbnail, dims) VALUES
  ('SKU-TAB',  E'Tab\tseparated', E'Line1\nLine2\r\nLine3', 1, 9.99, 'NaN', 'Infinity', '\x00'::bytea, '{1,NULL,3}'),
  ('SKU-BSL',  E'Back\\slash', E'Literal \\N is not NULL; \\. neither', 2, 19.50, 1.25, '-Infinity', '\x000102ff00'::bytea, '{}'),
  ('SKU-QUO',  'O''Reilly "quoted"', '', 3, 5.00, NULL, 'NaN', ''::bytea, NULL),
  ('SKU-UNI',  'Zürich – 日本 – Ελλάδα – 🚀', 'non-ASCII ✓', 4, 123.45, 0, 0.1, decode(repeat('00', 16), 'hex'), '{{1,2},{3,4}}'),
  ('SKU-NULL', 'All nulls', NULL, NULL, 1.00, NULL, NULL, NULL, NULL);

INSERT INTO inventory.products (sku, name, description, shelf, price, cost, weight_kg, thumbnail, dims)
SELECT 'SKU-' || lpad(g::text, 5, '0'),
       'Product #' || g,
       CASE WHEN g % 5 = 0 THEN NULL ELSE 'Description for product ' || g END,
       (g % 300)::int2,
       round(1 + g * 0.37, 2),
       CASE WHEN g % 50 = 0 THEN 'NaN'::numeric ELSE g / 7.0 END,
       g * 0.125 + 0.1,
       decode(lpad(to_hex(g), 8, '0') || '00ff00', 'hex'),
       ARRAY[g, g % 3, CASE WHEN g % 2 = 0 THEN NULL ELSE g END]
FROM generate_series(6, 200) AS g;

------------------------------------------------------------------------------
-- sales.orders: identity GENERATED ALWAYS, FK ON DELETE CASCADE, enum, domain,
-- generated column, uuid, interval, numeric NaN, float8 specials, partial index
------------------------------------------------------------------------------
CREATE TABLE sales.orders (
  id             integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  customer_id    bigint NOT NULL REFERENCES public.customers (id) ON DELETE CASCADE,
  status         public.order_status NOT NULL DEFAULT 'pending',
  total          public.positive_money NOT NULL,
  total_with_tax numeric(14,2) GENERATED ALWAYS AS (round(total * 1.077, 2)) STORED,
  discount       numeric,
  ordered_at     timestamp NOT NULL,
  ship_window    interval,
  tracking_id    uuid,
  weight_kg      float8,
  notes          text,
  CONSTRAINT orders_discount_chk CHECK (discount = 'NaN' OR discount BETWEEN 0 AND 1)
);
CREATE UNIQUE INDEX orders_tracking_id_key ON sales.orders (tracking_id);
CREATE INDEX orders_customer_idx ON sales.orders (customer_id);
CREATE INDEX orders_pending_idx ON sales.orders (ordered_at) WHERE status = 'pending';

INSERT INTO sales.orders (customer_id, status, total, discount, ordered_at, ship_window,
                          tracking_id, weight_kg, notes)
SELECT 1 + (g * 7) % 2000,
       (enum_range(NULL::public.order_status))[1 + g % 4],
       round(g * 3.17 % 1000, 2),
       CASE WHEN g % 97 = 0 THEN 'NaN'::numeric WHEN g % 3 = 0 THEN NULL ELSE (g % 20) / 100.0 END,
       timestamp '2022-06-01 08:00:00' + g * interval '2 hours 13 min',
       CASE WHEN g % 4 = 0 THEN NULL ELSE make_interval(days => g % 10, hours => g % 24, secs => 0.5) END,
       CASE WHEN g % 10 = 0 THEN NULL ELSE md5('order-' || g)::uuid END,
       CASE g % 500 WHEN 0 THEN 'Infinity'::float8 WHEN 1 THEN '-Infinity' WHEN 2 THEN 'NaN'
                    ELSE g / 3.0 END,
       CASE WHEN g % 250 = 0 THEN E'gift\twrap\n"fragile"' END
FROM generate_series(1, 5000) AS g;

------------------------------------------------------------------------------
-- sales."Order Items": quoted identifiers, reserved-word column, int2, composite PK
------------------------------------------------------------------------------
CREATE TABLE sales."Order Items" (
  order_id   integer NOT NULL REFERENCES sales.orders (id) ON DELETE CASCADE,
  line_no    int2 NOT NULL,
  product_id integer NOT NULL REFERENCES inventory.products (id),
  "Quantity" int4 NOT NULL CHECK ("Quantity" > 0),
  "select"   boolean NOT NULL DEFAULT false,
  unit_price numeric(10,2) NOT NULL,
  PRIMARY KEY (order_id, line_no)
);
CREATE INDEX "Order Items_product_idx" ON sales."Order Items" (product_id);
COMMENT ON COLUMN sales."Order Items"."select" IS 'Reserved word as a column name';

INSERT INTO sales."Order Items" (order_id, line_no, product_id, "Quantity", "select", unit_price)
SELECT o.id, l, 1 + (o.id * 7 + l) % 200, 1 + (o.id + l) % 5, (o.id + l) % 2 = 0,
       (o.id * l) % 100 + 0.99
FROM sales.orders AS o, generate_series(1, 1 + o.id % 3) AS l
WHERE o.id <= 2500;

------------------------------------------------------------------------------
-- Function used by the materialized view (runs at REFRESH time during restore)
------------------------------------------------------------------------------
CREATE FUNCTION sales.order_total(p_order_id integer) RETURNS numeric
LANGUAGE plpgsql STABLE AS $$
DECLARE
  v numeric;
BEGIN
  SELECT coalesce(sum(i."Quantity" * i.unit_price), 0) INTO v
  FROM sales."Order Items" AS i
  WHERE i.order_id = p_order_id;
  RETURN v;
END
$$;

------------------------------------------------------------------------------
-- View and materialized view
------------------------------------------------------------------------------
CREATE VIEW sales.order_summary AS
SELECT o.id AS order_id, public.customer_label(c.name, c.city) AS customer,
       o.status, o.total, o.total_with_tax, o.ordered_at
FROM sales.orders AS o
JOIN public.customers AS c ON c.id = o.customer_id;

CREATE MATERIALIZED VIEW sales.customer_totals AS
SELECT c.id AS customer_id, count(o.id) AS order_count,
       coalesce(sum(sales.order_total(o.id)), 0) AS items_value
FROM public.customers AS c
LEFT JOIN sales.orders AS o ON o.customer_id = c.id
GROUP BY c.id
WITH DATA;
CREATE UNIQUE INDEX customer_totals_pkey ON sales.customer_totals (customer_id);

------------------------------------------------------------------------------
-- inventory.stock_movements: range partitioned, 2 partitions + DEFAULT
------------------------------------------------------------------------------
CREATE TABLE inventory.stock_movements (
  id         bigint NOT NULL,
  product_id integer NOT NULL REFERENCES inventory.products (id),
  moved_on   date NOT NULL,
  qty        int4 NOT NULL CHECK (qty <> 0),
  note       text,
  PRIMARY KEY (id, moved_on)
) PARTITION BY RANGE (moved_on);
CREATE TABLE inventory.stock_movements_2023 PARTITION OF inventory.stock_movements
  FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
CREATE TABLE inventory.stock_movements_2024 PARTITION OF inventory.stock_movements
  FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE inventory.stock_movements_default PARTITION OF inventory.stock_movements DEFAULT;
CREATE INDEX stock_movements_product_idx ON inventory.stock_movements (product_id);

-- dates 2022-07-01 .. 2025-03-27: rows land in all three partitions
INSERT INTO inventory.stock_movements (id, product_id, moved_on, qty, note)
SELECT g, 1 + g % 200, date '2022-07-01' + g % 1001,
       CASE WHEN g % 3 = 0 THEN -(g % 17 + 1) ELSE g % 50 + 1 END,
       CASE WHEN g % 100 = 0 THEN 'inventory count' END
FROM generate_series(1, 3000) AS g;

------------------------------------------------------------------------------
-- "Audit Log".events: no primary key, REPLICA IDENTITY FULL, duplicate rows,
-- filled by a plpgsql trigger on sales.orders
------------------------------------------------------------------------------
CREATE TABLE "Audit Log".events (
  op         text NOT NULL,
  table_name text NOT NULL,
  row_id     bigint,
  payload    jsonb  -- FULL identity compares every column: json has no equality, jsonb has
);
ALTER TABLE "Audit Log".events REPLICA IDENTITY FULL;
COMMENT ON TABLE "Audit Log".events IS 'Append-only audit trail (no PK; duplicates allowed)';

CREATE FUNCTION "Audit Log".log_order_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO "Audit Log".events (op, table_name, row_id, payload)
  VALUES (TG_OP, TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, OLD.id, to_jsonb(OLD));
  RETURN NULL;
END
$$;

CREATE TRIGGER "Orders Audit"
  AFTER UPDATE OR DELETE ON sales.orders
  FOR EACH ROW EXECUTE FUNCTION "Audit Log".log_order_change();

-- Fire the trigger deterministically: updates, plus a cascading delete
UPDATE sales.orders SET status = 'shipped' WHERE id % 10 = 0 AND status = 'pending';
DELETE FROM public.customers WHERE id IN (1999, 2000);  -- cascades to orders and items

-- Exact duplicate rows
INSERT INTO "Audit Log".events SELECT * FROM "Audit Log".events WHERE op = 'DELETE';
INSERT INTO "Audit Log".events (op, table_name, row_id, payload)
SELECT 'NOTE', 'manual', NULL, '{"msg": "duplicate",  "spacing":  "kept"}'
FROM generate_series(1, 3);

REFRESH MATERIALIZED VIEW sales.customer_totals;

------------------------------------------------------------------------------
-- public.documents: TOASTed values (compressible and incompressible)
------------------------------------------------------------------------------
CREATE TABLE public.documents (
  id    int4 PRIMARY KEY,
  title text NOT NULL,
  body  text
);
ALTER TABLE public.documents ALTER COLUMN body SET STORAGE EXTERNAL;  -- force out-of-line

INSERT INTO public.documents VALUES
  (1, 'repeat x', repeat('x', 100000)),
  (2, 'md5 chain', (SELECT string_agg(md5(g::text), '' ORDER BY g) FROM generate_series(1, 4000) AS g)),
  (3, 'small', 'tiny');

------------------------------------------------------------------------------
-- Large object with a fixed OID
------------------------------------------------------------------------------
SELECT lo_from_bytea(424242, 'hello large object'::bytea);
COMMENT ON LARGE OBJECT 424242 IS 'fixture large object';

ANALYZE;
