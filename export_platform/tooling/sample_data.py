"""Schemas and a deterministic generator for the sample export types.

Rows are computed inside Postgres from `generate_series`, so seeding a million rows takes
seconds and the same N always yields the same data. The first ids of every table carry nasty
values (NULL beside empty string, delimiters, quotes, newlines, non-ASCII, formula-looking
text, COPY's own `\\N` marker, extreme NUMERICs, timestamps entered in several zones) that the
round-trip tests compare byte for byte.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id bigint PRIMARY KEY,
    name text,
    email text,
    signup_date date,
    country_code char(2),
    subscription_tier text,
    lifetime_value numeric(10, 2),
    updated_at timestamptz
);
CREATE TABLE IF NOT EXISTS ezpass_transactions (
    id bigint PRIMARY KEY,
    transaction_id bigint,
    posting_date date,
    transaction_date timestamptz,
    amount numeric(10, 2),
    plate_number text,
    entry_plaza text,
    exit_plaza text,
    status text,
    driver_id bigint,
    medallion_no text,
    vin text,
    updated_at timestamptz
);
CREATE TABLE IF NOT EXISTS ledger_postings (
    id bigint PRIMARY KEY,
    journal_id bigint,
    account_code text,
    posting_date date,
    posted_at timestamptz,
    amount numeric(14, 2),
    currency char(3),
    description text,
    memo text
);
-- The ledger is requested by posting date (its application's day and month exports): without an
-- index, each of those requests is two scans of the whole table, the count and the rows.
CREATE INDEX IF NOT EXISTS ledger_postings_posting_date ON ledger_postings (posting_date);
"""

_GENERATE = {
    "users": """
INSERT INTO users
SELECT g,
       CASE WHEN g % 97 = 0 THEN NULL
            ELSE (ARRAY['Ana','Bo','Chen','Dmitri','Émilie','Fatima','Günter','Hiro'])[1 + g % 8]
                 || ' ' || (ARRAY['Smith','O''Brien','Núñez','Li','Kowalski','Nakamura'])[1 + (g / 8) % 6]
       END,
       CASE WHEN g % 89 = 0 THEN '' ELSE 'user' || g || '@example.com' END,
       date '2015-01-01' + ((g * 7) % 3650)::int,
       (ARRAY['US','GB','DE','FR','JP','BR','IN','CA'])[1 + (g * 13) % 8],
       (ARRAY['free','basic','pro','enterprise'])[1 + (g * 31) % 4],
       ((g * 7919) % 1000000000) / 100.0 - CASE WHEN g % 50 = 0 THEN 5000000 ELSE 0 END,
       timestamptz '2024-01-01 00:00:00+00' + g * interval '37.123457 seconds'
FROM generate_series(1::bigint, {rows}) AS g
""",
    "ezpass_transactions": """
INSERT INTO ezpass_transactions
SELECT g,
       900000000 + g * 3,
       date '2024-01-01' + (g / 2000)::int,
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute 3.5 seconds',
       ((g * 37) % 4000) / 100.0 + 1.25,
       CASE WHEN g % 101 = 0 THEN NULL ELSE 'T' || lpad(((g * 7) % 99999)::text, 5, '0') || 'C' END,
       (ARRAY['GWB','Lincoln Tunnel','Holland Tunnel','Verrazzano','Goethals','Bayonne'])[1 + g % 6],
       (ARRAY['GWB','Lincoln Tunnel','Holland Tunnel','Verrazzano','Goethals','Bayonne'])[1 + (g * 5) % 6],
       (ARRAY['POSTED','PENDING','DISPUTED','REFUNDED'])[1 + (g * 11) % 4],
       1000 + (g * 17) % 5000,
       lpad(((g * 13) % 13000)::text, 4, '0') || 'M',
       CASE WHEN g % 53 = 0 THEN '' ELSE '1HGCM' || lpad(((g * 104729) % 1000000000000)::text, 12, '0') END,
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute 3.5 seconds' + interval '2 days'
FROM generate_series(1::bigint, {rows}) AS g
""",
    "ledger_postings": """
INSERT INTO ledger_postings
SELECT g,
       (g + 1) / 2,
       (ARRAY['1000-CASH','1200-AR','2000-AP','4000-REVENUE','5000-COGS','6100-RENT'])[1 + (g * 7) % 6],
       date '2023-01-01' + (g / 500)::int,
       timestamptz '2023-01-01 09:00:00+00' + g * interval '17.25 seconds',
       CASE WHEN g % 2 = 0 THEN -1 ELSE 1 END * (((g / 2 + 1) * 104729) % 100000000000) / 100.0,
       (ARRAY['USD','EUR','GB','JPY'])[1 + (g * 3) % 4],
       'Journal ' || ((g + 1) / 2) || CASE WHEN g % 2 = 0 THEN ' credit' ELSE ' debit' END,
       CASE WHEN g % 7 = 0 THEN NULL WHEN g % 11 = 0 THEN '' ELSE 'memo ' || g END
FROM generate_series(1::bigint, {rows}) AS g
""",
}

# Rows 1..N of each table are overwritten with these (only those ids that exist).
_NASTY = {
    "users": """
UPDATE users AS u SET name = v.name, email = v.email, country_code = v.cc,
       lifetime_value = v.lv, updated_at = v.ts, signup_date = v.sd
FROM (VALUES
  (1, 'Comma, Quote "Q" O''Brien', '', NULL, 0.00, timestamptz '2024-03-10 01:59:59.5-05', date '2015-01-01'),
  (2, E'multi\\nline\\r\\nname', NULL, 'US', -99999999.99, timestamptz '2024-03-10 03:00:00-04', date '2000-02-29'),
  (3, 'Zoë 李 😀 Ωmega ﷽', 'zoë@例え.jp', 'JP', 99999999.99, timestamptz '2024-06-30 23:59:59.999999+09', date '1999-12-31'),
  (4, '', ' spaced out ', 'GB', 0.01, timestamptz '1969-07-20 20:17:40-04', NULL),
  (5, '=cmd|'' /C calc''!A0', '+1@example.com', 'DE', -0.01, timestamptz '2099-12-31 23:59:59.999999+14', date '2038-01-19'),
  (6, E'tab\\there', '@at@example.com', 'FR', 12345678.90, timestamptz '2024-11-03 01:30:00-07', date '2024-02-29'),
  (7, 'x''); DROP TABLE users;--', E'back\\\\slash \\\\N', 'BR', 1.00, NULL, date '2024-01-01'),
  (8, '\\N', 'NULL', 'IN', NULL, timestamptz '2024-01-01 00:00:00+05:45', date '2024-01-01'),
  (9, 'NULL', '""', 'CA', 100.00, timestamptz '2024-01-01 00:00:00-12', date '2024-12-31'),
  (10, '  ', E'\\r', NULL, 50.50, timestamptz '1900-01-01 00:00:00+00', date '1900-01-01')
) AS v(id, name, email, cc, lv, ts, sd)
WHERE u.id = v.id
""",
    "ezpass_transactions": """
UPDATE ezpass_transactions AS e SET plate_number = v.plate, entry_plaza = v.plaza,
       transaction_date = v.ts, amount = v.amount, status = v.status
FROM (VALUES
  (1, 'ABC,123', 'GWB, upper level', timestamptz '2024-01-01 00:30:00+05:30', 0.00, 'POSTED'),
  (2, 'NY "VANITY"', E'Exit\\n13', timestamptz '2023-12-31 23:59:59.999999-08', -12.75, ''),
  (3, 'ÄÖÜ-999', 'Plaza ü', timestamptz '2024-03-10 02:30:00+00', 99999999.99, NULL),
  (4, '', NULL, NULL, -99999999.99, 'PENDING'),
  (5, '-5', '=SUM(A1:A2)', timestamptz '2024-01-02 00:00:00+00', 3.50, 'DISPUTED')
) AS v(id, plate, plaza, ts, amount, status)
WHERE e.id = v.id
""",
    "ledger_postings": """
UPDATE ledger_postings AS l SET amount = v.amount, description = v.descr, memo = v.memo,
       posted_at = v.ts
FROM (VALUES
  (1, 9999999999.99, 'Largest, "quoted" posting', E'line1\\nline2', timestamptz '2023-01-01 00:00:00+01'),
  (2, -9999999999.99, 'Smallest posting', '', timestamptz '2022-12-31 23:00:00-01'),
  (3, 0.00, 'Zéro € posting', NULL, timestamptz '2023-03-26 02:30:00+02'),
  (4, -0.01, '', E'\\\\N', NULL)
) AS v(id, amount, descr, memo, ts)
WHERE l.id = v.id
""",
}

TABLES = tuple(_GENERATE)


def create_schema(conn: psycopg.Connection) -> None:
    conn.execute(SCHEMA)


def seed(conn: psycopg.Connection, rows: int, tables: tuple[str, ...] = TABLES) -> None:
    """Replace the sample tables' contents with `rows` deterministic rows each."""
    with conn.transaction():
        _replace_rows(conn, rows, tables)


def _replace_rows(conn: psycopg.Connection, rows: int, tables: tuple[str, ...]) -> None:
    create_schema(conn)
    for table in tables:
        conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(table)))
        conn.execute(sql.SQL(_GENERATE[table]).format(rows=sql.Literal(int(rows))))
        conn.execute(_NASTY[table])
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
