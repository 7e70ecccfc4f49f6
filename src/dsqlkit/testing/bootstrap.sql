CREATE ROLE admin WITH SUPERUSER LOGIN;
-- The loader names this schema pg_dsqlkit (see _internal.py): the pg_ prefix needs this.
SET allow_system_table_mods = on;
CREATE SCHEMA dsqlkit_internal;
RESET allow_system_table_mods;
GRANT USAGE ON SCHEMA dsqlkit_internal TO PUBLIC;

-- Failing COMMIT on purpose (injected conflicts, deferred OCC conflicts, the age limit).
CREATE TABLE dsqlkit_internal.doomed (sqlstate text NOT NULL, message text NOT NULL);
CREATE FUNCTION dsqlkit_internal.fail_commit() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
  RAISE EXCEPTION USING ERRCODE = NEW.sqlstate, MESSAGE = NEW.message;
END $$;
CREATE CONSTRAINT TRIGGER fail_commit
  AFTER INSERT ON dsqlkit_internal.doomed
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
  EXECUTE FUNCTION dsqlkit_internal.fail_commit();
GRANT INSERT ON dsqlkit_internal.doomed TO PUBLIC;

-- Refusing a statement: the backend raises DSQL's error, so a transaction is aborted
-- exactly when DSQL would abort it.
CREATE FUNCTION dsqlkit_internal.raise_error(sqlstate text, message text) RETURNS void
  LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION USING ERRCODE = sqlstate, MESSAGE = message;
END $$;

-- The row limit and the size limits (user guide: Cluster quotas and database limits): every
-- user table gets statement triggers that count, from the statement's transition table, the
-- rows it modified and the bytes it wrote, per transaction. One call per statement, not per
-- row; a row of at most 1 KiB cannot break a key, column or row limit, so only larger rows are
-- looked at one by one.
CREATE FUNCTION dsqlkit_internal.count_rows() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
  modified bigint;
  written bigint := 0;
  largest bigint := 0;
  n bigint;
  total bigint;
  key_columns text[];
  key_size bigint;
  col text;
  width bigint;
BEGIN
  IF TG_OP = 'DELETE' THEN
    SELECT count(*) INTO modified FROM dsqlkit_old;
  ELSE
    SELECT count(*), coalesce(sum(pg_column_size(t.*)), 0), coalesce(max(pg_column_size(t.*)), 0)
      INTO modified, written, largest FROM dsqlkit_new t;
  END IF;
  IF modified = 0 THEN
    RETURN NULL;
  END IF;
  n := coalesce(nullif(current_setting('dsqlkit.rows', true), ''), '0')::bigint + modified;
  IF n > current_setting('dsqlkit.row_limit')::bigint THEN
    RAISE EXCEPTION USING ERRCODE = '54000', MESSAGE = 'transaction row limit exceeded';
  END IF;
  PERFORM set_config('dsqlkit.rows', n::text, true);
  IF TG_OP = 'DELETE' THEN
    RETURN NULL;
  END IF;
  IF largest > 1024 THEN  -- only rows over 1 KiB can break a key, column or row limit
    FOR key_columns IN
      SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_catalog.pg_index i
        JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid
         AND a.attnum = ANY (i.indkey[0:i.indnkeyatts - 1])
       WHERE i.indrelid = TG_RELID GROUP BY i.indexrelid LOOP
      EXECUTE (SELECT 'SELECT max(' || string_agg(format('coalesce(pg_column_size(t.%I), 0)', c),
                                                   ' + ')
                      || ') FROM dsqlkit_new t WHERE pg_column_size(t.*) > 1024'
                 FROM unnest(key_columns) c)
        INTO key_size;
      IF key_size > 1024 THEN
        RAISE EXCEPTION USING ERRCODE = '54000', MESSAGE = 'key size too large';
      END IF;
    END LOOP;
    IF largest > 1048576 THEN
      FOR col IN SELECT a.attname::text FROM pg_catalog.pg_attribute a
                  WHERE a.attrelid = TG_RELID AND a.attnum > 0 AND NOT a.attisdropped LOOP
        EXECUTE format('SELECT max(pg_column_size(t.%I)) FROM dsqlkit_new t '
                       'WHERE pg_column_size(t.*) > 1048576', col) INTO width;
        IF width > 1048576 THEN
          RAISE EXCEPTION USING ERRCODE = '54000', MESSAGE = 'maximum column size exceeded';
        END IF;
      END LOOP;
    END IF;
    IF largest > 2097152 THEN
      RAISE EXCEPTION USING ERRCODE = '54000', MESSAGE = 'maximum row size exceeded';
    END IF;
  END IF;
  total := coalesce(nullif(current_setting('dsqlkit.bytes', true), ''), '0')::bigint + written;
  IF total > current_setting('dsqlkit.byte_limit')::bigint THEN
    RAISE EXCEPTION USING ERRCODE = '54000', MESSAGE = 'transaction size limit 10mb exceeded',
      DETAIL = format('Current transaction size %smb 10mb', ceil(total / 1048576.0));
  END IF;
  PERFORM set_config('dsqlkit.bytes', total::text, true);
  RETURN NULL;
END $$;
-- The counters are marked internal, as PostgreSQL marks the triggers behind its own
-- constraints: they still fire, but psql's \d, information_schema.triggers and other tools'
-- catalog queries do not list them as part of the user's table (DSQL has no triggers).
CREATE FUNCTION dsqlkit_internal.hide_row_counter(relation oid) RETURNS void
  LANGUAGE sql SECURITY DEFINER AS $$
  UPDATE pg_catalog.pg_trigger SET tgisinternal = true
   WHERE tgrelid = relation AND tgname LIKE 'dsqlkit\_row\_limit%'
$$;
CREATE FUNCTION dsqlkit_internal.add_row_counter() RETURNS event_trigger
  LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
  FOR r IN SELECT * FROM pg_event_trigger_ddl_commands()
           WHERE command_tag = 'CREATE TABLE' AND object_type = 'table'
             AND schema_name NOT IN ('dsqlkit_internal', 'sys') LOOP
    -- A trigger with transition tables takes one event: three triggers.
    EXECUTE format('CREATE TRIGGER dsqlkit_row_limit_i AFTER INSERT ON %s '
                   'REFERENCING NEW TABLE AS dsqlkit_new FOR EACH STATEMENT '
                   'EXECUTE FUNCTION dsqlkit_internal.count_rows()', r.object_identity);
    EXECUTE format('CREATE TRIGGER dsqlkit_row_limit_u AFTER UPDATE ON %s '
                   'REFERENCING NEW TABLE AS dsqlkit_new FOR EACH STATEMENT '
                   'EXECUTE FUNCTION dsqlkit_internal.count_rows()', r.object_identity);
    EXECUTE format('CREATE TRIGGER dsqlkit_row_limit_d AFTER DELETE ON %s '
                   'REFERENCING OLD TABLE AS dsqlkit_old FOR EACH STATEMENT '
                   'EXECUTE FUNCTION dsqlkit_internal.count_rows()', r.object_identity);
    PERFORM dsqlkit_internal.hide_row_counter(r.objid);
  END LOOP;
END $$;
CREATE EVENT TRIGGER dsqlkit_row_limit ON ddl_command_end WHEN TAG IN ('CREATE TABLE')
  EXECUTE FUNCTION dsqlkit_internal.add_row_counter();

-- Asynchronous DDL jobs, listed in sys.jobs.
CREATE SCHEMA sys;
GRANT USAGE ON SCHEMA sys TO PUBLIC;
CREATE TABLE sys.jobs (
  job_id text PRIMARY KEY, status text NOT NULL, details text, job_type text NOT NULL,
  class_id oid, object_id oid, object_name text,
  start_time timestamptz NOT NULL, update_time timestamptz NOT NULL);
GRANT SELECT ON sys.jobs TO PUBLIC;
CREATE FUNCTION dsqlkit_internal.record_job(
  job text, status text, details text, job_type text, object_id oid, object_name text,
  started timestamptz)
  RETURNS void LANGUAGE sql SECURITY DEFINER AS $$
  INSERT INTO sys.jobs VALUES (job, status, details, job_type, 'pg_class'::regclass,
                               object_id, object_name, started, clock_timestamp())
$$;
-- CREATE INDEX ASYNC (kind 'index') and ALTER TABLE ASYNC ... VALIDATE CONSTRAINT (kind
-- 'validate'): the DDL runs at once and is recorded as a finished job. A build or validation
-- that fails on the data fails the job, not the statement (as on DSQL).
CREATE FUNCTION dsqlkit_internal.run_job(
  ddl text, kind text, relation text DEFAULT NULL, constraint_name text DEFAULT NULL)
  RETURNS text
  LANGUAGE plpgsql AS $$
DECLARE
  job text := (SELECT string_agg(substr('abcdefghijklmnopqrstuvwxyz234567',
                                        floor(random() * 32)::int + 1, 1), '')
               FROM generate_series(1, 26));
  started timestamptz := clock_timestamp();
  state text := 'completed';
  why text;
  target oid;
  target_name text;
  newest oid := (SELECT max(oid) FROM pg_class);
BEGIN
  BEGIN
    EXECUTE ddl;
  EXCEPTION WHEN integrity_constraint_violation THEN
    state := 'failed';
    why := SQLERRM;
  END;
  IF kind = 'index' THEN
    SELECT c.oid, c.relname INTO target, target_name FROM pg_class c
     WHERE c.relkind = 'i' AND c.oid > newest ORDER BY c.oid LIMIT 1;
    PERFORM dsqlkit_internal.record_job(job, state, why, 'INDEX_BUILD', target, target_name,
                                        started);
  ELSE
    PERFORM dsqlkit_internal.record_job(job, state, why, 'VALIDATE_CONSTRAINT',
                                        to_regclass(relation), constraint_name, started);
  END IF;
  RETURN job;
END $$;
CREATE FUNCTION sys.dsqlkit_wait_for_job(job text) RETURNS boolean
  LANGUAGE plpgsql AS $$
DECLARE state text;
BEGIN
  IF job IS NULL OR job !~ '^[a-z2-7]{26}$' THEN
    RAISE EXCEPTION USING ERRCODE = '22P02', MESSAGE = 'Unable to convert text to UUID';
  END IF;
  SELECT j.status INTO state FROM sys.jobs j WHERE j.job_id = job;
  IF state IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '42704', MESSAGE = format('job "%s" not found', job);
  END IF;
  RETURN state = 'completed';
END $$;
CREATE PROCEDURE sys.wait_for_job(job text) LANGUAGE plpgsql AS $$
BEGIN
  PERFORM sys.dsqlkit_wait_for_job(job);
END $$;

-- IAM identities mapped to roles (AWS IAM GRANT / REVOKE, sys.iam_pg_role_mappings).
CREATE SEQUENCE dsqlkit_internal.iam_oid START 26000;
CREATE TABLE dsqlkit_internal.iam_identities (
  iam_oid oid PRIMARY KEY DEFAULT nextval('dsqlkit_internal.iam_oid')::oid,
  arn text NOT NULL UNIQUE);
CREATE TABLE dsqlkit_internal.iam_mappings (
  iam_oid oid NOT NULL REFERENCES dsqlkit_internal.iam_identities,
  pg_role_oid oid NOT NULL, grantor_pg_role_oid oid NOT NULL,
  PRIMARY KEY (iam_oid, pg_role_oid));
CREATE VIEW sys.iam_pg_role_mappings AS
  SELECT m.iam_oid, i.arn, m.pg_role_oid, r.rolname::text AS pg_role_name,
         m.grantor_pg_role_oid, g.rolname::text AS grantor_pg_role_name
    FROM dsqlkit_internal.iam_mappings m
    JOIN dsqlkit_internal.iam_identities i USING (iam_oid)
    JOIN pg_catalog.pg_roles r ON r.oid = m.pg_role_oid
    LEFT JOIN pg_catalog.pg_roles g ON g.oid = m.grantor_pg_role_oid;
GRANT SELECT ON sys.iam_pg_role_mappings TO PUBLIC;
CREATE FUNCTION dsqlkit_internal.iam_check(role text, arn text) RETURNS oid
  LANGUAGE plpgsql AS $$
DECLARE target oid := (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = role);
BEGIN
  IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
    RAISE EXCEPTION USING ERRCODE = '42501',
      MESSAGE = 'permission denied: only admin can map IAM identities to roles';
  END IF;
  IF target IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '42704', MESSAGE = format('role "%s" does not exist', role);
  END IF;
  IF role = 'admin' THEN
    RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 'the admin role cannot be mapped';
  END IF;
  IF arn !~ '^arn:aws[a-z-]*:iam::[0-9]{12}:(role|user)/[A-Za-z0-9+=,.@_/-]+$' THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('invalid IAM ARN "%s"', arn),
      HINT = 'Use an IAM role or user ARN such as arn:aws:iam::123456789012:role/app.';
  END IF;
  RETURN target;
END $$;
CREATE PROCEDURE dsqlkit_internal.aws_iam_grant(role text, arn text) LANGUAGE plpgsql AS $$
DECLARE
  target oid := dsqlkit_internal.iam_check(role, arn);
  ident oid;
BEGIN
  INSERT INTO dsqlkit_internal.iam_identities (arn) VALUES (arn) ON CONFLICT DO NOTHING;
  SELECT i.iam_oid INTO ident FROM dsqlkit_internal.iam_identities i WHERE i.arn = $2;
  INSERT INTO dsqlkit_internal.iam_mappings
    VALUES (ident, target, (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user))
    ON CONFLICT DO NOTHING;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = '42710',
      MESSAGE = format('role "%s" is already mapped to "%s"', role, arn);
  END IF;
END $$;
CREATE PROCEDURE dsqlkit_internal.aws_iam_revoke(role text, arn text) LANGUAGE plpgsql AS $$
DECLARE target oid := dsqlkit_internal.iam_check(role, arn);
BEGIN
  DELETE FROM dsqlkit_internal.iam_mappings m USING dsqlkit_internal.iam_identities i
   WHERE m.iam_oid = i.iam_oid AND i.arn = $2 AND m.pg_role_oid = target;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = '42704',
      MESSAGE = format('role "%s" is not mapped to "%s"', role, arn);
  END IF;
END $$;
-- Asked by the endpoint on the new session before the client gets it.
CREATE FUNCTION dsqlkit_internal.iam_may_connect(role text, arn text) RETURNS boolean
  LANGUAGE sql STABLE SECURITY DEFINER AS $$
  SELECT EXISTS (SELECT 1 FROM sys.iam_pg_role_mappings m
                  WHERE m.pg_role_name = role AND m.arn = iam_may_connect.arn)
$$;

-- The catalog limits (user guide: Cluster quotas and database limits), checked at the end of
-- each DDL statement, so a statement that would cross one fails as a whole.
CREATE FUNCTION dsqlkit_internal.check_limits() RETURNS event_trigger
  LANGUAGE plpgsql AS $$
DECLARE
  r record;
  internal CONSTANT text[] := ARRAY['pg_catalog', 'information_schema', 'pg_toast', 'sys',
                                    'dsqlkit_internal'];
BEGIN
  FOR r IN SELECT * FROM pg_event_trigger_ddl_commands()
            WHERE schema_name IS NULL OR NOT schema_name = ANY (internal) LOOP
    IF r.command_tag = 'CREATE SCHEMA' AND (SELECT count(*) FROM pg_catalog.pg_namespace
         WHERE NOT nspname = ANY (internal) AND nspname NOT LIKE 'pg\_%') > 10 THEN
      RAISE EXCEPTION USING ERRCODE = '54000', MESSAGE = 'more than 10 schemas not allowed';
    END IF;
    IF r.object_type = 'table' AND r.command_tag = 'CREATE TABLE'
       AND (SELECT count(*) FROM pg_catalog.pg_class c
              JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('r', 'p') AND NOT n.nspname = ANY (internal)
               AND n.nspname NOT LIKE 'pg\_%') > 1000 THEN
      RAISE EXCEPTION USING ERRCODE = '54000', MESSAGE = 'creating more than 1000 tables not allowed';
    END IF;
    IF r.object_type = 'view' AND (SELECT count(*) FROM pg_catalog.pg_class c
              JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind IN ('v', 'm') AND NOT n.nspname = ANY (internal)
               AND n.nspname NOT LIKE 'pg\_%') > 5000 THEN
      RAISE EXCEPTION USING ERRCODE = '54000', MESSAGE = 'creating more than 5000 views not allowed';
    END IF;
    IF r.object_type = 'table' AND (SELECT count(*) FROM pg_catalog.pg_attribute a
         WHERE a.attrelid = r.objid AND a.attnum > 0 AND NOT a.attisdropped) > 255 THEN
      RAISE EXCEPTION USING ERRCODE = '54011', MESSAGE = 'tables can have at most 255 columns';
    END IF;
    IF r.object_type IN ('table', 'index') AND EXISTS (
         SELECT 1 FROM pg_catalog.pg_index i
          WHERE (i.indrelid = r.objid OR i.indexrelid = r.objid) AND i.indnkeyatts > 8) THEN
      RAISE EXCEPTION USING ERRCODE = '54011',
        MESSAGE = 'more than 8 column keys in an index are not supported';
    END IF;
    IF r.object_type IN ('table', 'index') AND EXISTS (
         SELECT 1 FROM pg_catalog.pg_index i
          WHERE i.indrelid = coalesce((SELECT x.indrelid FROM pg_catalog.pg_index x
                                        WHERE x.indexrelid = r.objid), r.objid)
            AND NOT i.indisprimary
          GROUP BY i.indrelid HAVING count(*) > 24) THEN
      RAISE EXCEPTION USING ERRCODE = '54000',
        MESSAGE = 'more than 24 indexes per table are not allowed';
    END IF;
  END LOOP;
END $$;
CREATE EVENT TRIGGER dsqlkit_limits ON ddl_command_end
  WHEN TAG IN ('CREATE SCHEMA', 'CREATE TABLE', 'ALTER TABLE', 'CREATE INDEX', 'CREATE VIEW')
  EXECUTE FUNCTION dsqlkit_internal.check_limits();

-- DROP COLUMN of a primary-key column (one column of a composite key too) is refused by DSQL;
-- PostgreSQL would drop the key with it. The endpoint runs such an ALTER TABLE through here.
CREATE PROCEDURE dsqlkit_internal.alter_checked(ddl text, relation text, dropped text[])
  LANGUAGE plpgsql AS $$
DECLARE
  col text;
BEGIN
  SELECT a.attname INTO col FROM pg_catalog.pg_index i
    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
   WHERE i.indrelid = to_regclass(relation) AND i.indisprimary AND a.attname = ANY (dropped)
   ORDER BY array_position(dropped, a.attname::text) LIMIT 1;
  IF col IS NOT NULL THEN
    RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = format('cannot drop primary key column %s', col);
  END IF;
  EXECUTE ddl;
END $$;
-- [wire] begin: what clients see of the endpoint is DSQL's
-- DSQL's own session function: an id per connection, stable within it (AWS's connectors'
-- tests use it to tell connections apart). The format of DSQL's ids is not published.
CREATE FUNCTION sys.current_session_id() RETURNS text
  LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT substr(md5(pg_backend_pid()::text || '/' ||
                    (SELECT backend_start FROM pg_catalog.pg_stat_activity
                      WHERE pid = pg_backend_pid())::text), 1, 26)
$$;
GRANT EXECUTE ON FUNCTION sys.current_session_id() TO PUBLIC;
-- The endpoint's machinery is not the client's: information_schema.schemata does not list
-- its schema (psql's \dn and "non-system schema" filters skip it for its pg_ prefix), and
-- nothing in it or in sys can be dropped, as PostgreSQL refuses for its own schemas.
SET allow_system_table_mods = on;
DO $$
DECLARE definition text := rtrim(pg_get_viewdef('information_schema.schemata'::regclass), '; ');
BEGIN
  EXECUTE format('CREATE OR REPLACE VIEW information_schema.schemata AS '
                 'SELECT * FROM (%s) s WHERE s.schema_name::text <> %L',
                 definition, 'dsqlkit_internal');
END $$;
-- The guard lives in pg_catalog: a DROP ... CASCADE of its own schema would drop it (and its
-- event trigger) before it could fire.
CREATE FUNCTION pg_catalog.dsqlkit_protect_machinery() RETURNS event_trigger
  LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
  FOR r IN SELECT * FROM pg_event_trigger_dropped_objects() LOOP
    IF (r.object_type = 'schema' AND r.object_identity IN ('dsqlkit_internal', 'sys'))
       OR r.schema_name IN ('dsqlkit_internal', 'sys') THEN
      RAISE EXCEPTION USING ERRCODE = '2BP01',
        MESSAGE = format('cannot drop %s because it is required by the database system',
                         CASE WHEN r.object_type = 'schema'
                              THEN 'schema ' || r.object_identity
                              ELSE r.object_type || ' ' || r.object_identity END);
    END IF;
  END LOOP;
END $$;
RESET allow_system_table_mods;
CREATE EVENT TRIGGER dsqlkit_protect ON sql_drop
  EXECUTE FUNCTION pg_catalog.dsqlkit_protect_machinery();
-- [wire] end
