"""Replay recordings of a real Aurora DSQL cluster against the local endpoint and compare.

Follows ``shared/dsql-recordings/README.md``: fixtures first, cases in suite order (state
carries over), ``ROLLBACK`` after each single-connection case, concurrent cases in lockstep
(BEGIN, statement, COMMIT, 150 ms apart), then clean-up. The recordings come from
``recordings/`` next to this file (vendored, so a plain clone has them), overlaid by
``$DSQL_RECORDINGS`` or, when that is unset, ``../shared/dsql-recordings`` next to the
repository: a file there replaces the vendored one of the same name, and files beyond the
known seven are replayed after them, in name order.

Run it alone with ``python tests/conformance/harness.py`` (or ``nox -s conformance``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[2]
VENDORED_RECORDINGS = Path(__file__).with_name("recordings")
DEFAULT_RECORDINGS = ROOT.parent / "shared" / "dsql-recordings"
DIVERGENCES = Path(__file__).with_name("divergences.json")
#: The upstream suite's order (README "How a run executes"): groups in this order, cases in
#: file order; ``backlog`` is split around the isolation..index groups. A segment names the
#: cases it takes (``None``: the rest of the group). Files of groups not listed run last.
SUITE_ORDER: list[tuple[str, tuple[str, ...] | None]] = [
    ("unsupported", None),
    (
        "backlog",
        ("savepoint", "create_view", "create_sequence", "create_sequence_cached", "create_schema"),
    ),
    ("isolation", None),
    ("transaction", None),
    ("supported", None),
    ("index", None),
    ("backlog", None),
    ("types", None),
    ("enum", None),
    ("environment", None),
    ("occ", None),
    ("queries", None),
    ("alters", None),
    ("occ_conflict", None),
    ("multi_statement", None),
]


def U(xx: str) -> str:
    return f"'00000000-0000-0000-0000-0000000000{xx}'"


FIXTURES = [
    "CREATE TABLE baseline_parent (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), "
    "name text NOT NULL)",
    "CREATE TABLE baseline_child (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), "
    "parent_id uuid NOT NULL REFERENCES baseline_parent(id))",
    "CREATE TABLE baseline_idx (id uuid PRIMARY KEY, value text)",
    "CREATE TABLE baseline_bulk (id int)",
    "CREATE TABLE baseline_implicit_bulk (id int)",
    "CREATE TABLE baseline_drop_me (id int)",
    "CREATE TABLE baseline_alter (id int PRIMARY KEY, a text, b int)",
    "CREATE TABLE baseline_alter_pk (id int PRIMARY KEY, a text)",
    "CREATE TABLE baseline_alter_big (big bigint, note text)",
    "CREATE TABLE baseline_alter_fk (id int PRIMARY KEY, parent_id uuid)",
    "CREATE TABLE baseline_alter_pkadd (id int, v text)",
    "CREATE TABLE baseline_lat_parent (id text NOT NULL PRIMARY KEY)",
    "CREATE TABLE baseline_lat_child (id bigint NOT NULL PRIMARY KEY, parent_id text)",
    "CREATE TABLE baseline_multi (id int PRIMARY KEY, a int)",
    "CREATE TABLE baseline_fk_action (id uuid PRIMARY KEY, name text NOT NULL)",
    "CREATE TABLE baseline_fk_cascade (id uuid PRIMARY KEY, parent_id uuid "
    "REFERENCES baseline_fk_action(id) ON DELETE CASCADE, note text)",
    "CREATE TABLE baseline_fk_setnull (id uuid PRIMARY KEY, parent_id uuid "
    "REFERENCES baseline_fk_action(id) ON DELETE SET NULL, note text)",
    f"CREATE TABLE baseline_fk_setdefault (id uuid PRIMARY KEY, parent_id uuid DEFAULT {U('c4')} "
    "REFERENCES baseline_fk_action(id) ON DELETE SET DEFAULT, note text)",
    "CREATE TABLE baseline_span (id int PRIMARY KEY, k int NOT NULL, v text)",
    "CREATE TABLE baseline_conflict (id uuid PRIMARY KEY, name text NOT NULL)",
    "CREATE TABLE baseline_conflict_child (id uuid PRIMARY KEY, parent_id uuid NOT NULL "
    "REFERENCES baseline_conflict(id))",
]
SEEDS = [
    f"INSERT INTO baseline_parent (id, name) VALUES ({U('aa')}, 'seed')",
    "INSERT INTO baseline_lat_parent (id) VALUES ('a')",
    "INSERT INTO baseline_lat_child (id, parent_id) VALUES (1, 'a')",
    f"INSERT INTO baseline_fk_action (id, name) VALUES ({U('c1')}, 'cascade'), "
    f"({U('c2')}, 'set-null'), ({U('c3')}, 'set-default'), ({U('c4')}, 'default-target')",
    f"INSERT INTO baseline_fk_cascade VALUES ({U('d1')}, {U('c1')}, 'child')",
    f"INSERT INTO baseline_fk_setnull VALUES ({U('d2')}, {U('c2')}, 'child')",
    f"INSERT INTO baseline_fk_setdefault VALUES ({U('d3')}, {U('c3')}, 'child')",
    "INSERT INTO baseline_span VALUES (1, 1, 'a'), (2, 1, 'b'), (3, 1, 'c'), (4, 2, 'other')",
    f"INSERT INTO baseline_conflict (id, name) VALUES ({U('ab')}, 'conflict-fk'), "
    f"({U('ac')}, 'conflict-row'), ({U('ad')}, 'disjoint-a'), ({U('ae')}, 'disjoint-b'), "
    f"({U('af')}, 'conflict-nonkey')",
]
#: The SQL each session of a concurrent case runs between BEGIN and COMMIT (README table).
SESSIONS = {
    "occ_write_write": (
        f"UPDATE baseline_conflict SET name = 'ww-a' WHERE id = {U('ac')}",
        f"UPDATE baseline_conflict SET name = 'ww-b' WHERE id = {U('ac')}",
    ),
    "occ_for_update_vs_write": (
        f"SELECT name FROM baseline_conflict WHERE id = {U('ac')} FOR UPDATE",
        f"UPDATE baseline_conflict SET name = 'fu-b' WHERE id = {U('ac')}",
    ),
    "occ_for_key_share_vs_delete": (
        f"SELECT name FROM baseline_conflict WHERE id = {U('ac')} FOR KEY SHARE",
        f"DELETE FROM baseline_conflict WHERE id = {U('ac')}",
    ),
    "occ_fk_delete_insert": (
        f"DELETE FROM baseline_conflict WHERE id = {U('ab')}",
        f"INSERT INTO baseline_conflict_child (id, parent_id) VALUES ({U('b0')}, {U('ab')})",
    ),
    "occ_fk_nonkey_update": (
        f"UPDATE baseline_conflict SET name = 'nk' WHERE id = {U('af')}",
        f"INSERT INTO baseline_conflict_child (id, parent_id) VALUES ({U('b1')}, {U('af')})",
    ),
    "occ_fk_cascade_vs_child_write": (
        f"DELETE FROM baseline_fk_action WHERE id = {U('c1')}",
        f"UPDATE baseline_fk_cascade SET note = 'touched' WHERE id = {U('d1')}",
    ),
    "occ_fk_set_null_vs_child_write": (
        f"DELETE FROM baseline_fk_action WHERE id = {U('c2')}",
        f"UPDATE baseline_fk_setnull SET note = 'touched' WHERE id = {U('d2')}",
    ),
    "occ_fk_set_default_vs_child_write": (
        f"DELETE FROM baseline_fk_action WHERE id = {U('c3')}",
        f"UPDATE baseline_fk_setdefault SET note = 'touched' WHERE id = {U('d3')}",
    ),
    "occ_multirow_predicate": (
        "UPDATE baseline_span SET v = 'a-side' WHERE k = 1",
        "UPDATE baseline_span SET v = 'b-side' WHERE k = 1",
    ),
    "occ_disjoint_writes": (
        f"UPDATE baseline_conflict SET name = 'dw-a' WHERE id = {U('ad')}",
        f"UPDATE baseline_conflict SET name = 'dw-b' WHERE id = {U('ae')}",
    ),
}
CLEANUP_SQL = """
SELECT format('DROP %s IF EXISTS %s CASCADE', kind, name) FROM (
  SELECT 'TABLE' AS kind, quote_ident(relname) AS name, 1 AS o FROM pg_class
   WHERE relname LIKE 'baseline%' AND relkind = 'r' AND relnamespace = 'public'::regnamespace
  UNION ALL SELECT 'VIEW', quote_ident(relname), 0 FROM pg_class
   WHERE relname LIKE 'baseline%' AND relkind = 'v' AND relnamespace = 'public'::regnamespace
  UNION ALL SELECT 'SEQUENCE', quote_ident(relname), 2 FROM pg_class
   WHERE relname LIKE 'baseline%' AND relkind = 'S' AND relnamespace = 'public'::regnamespace
  UNION ALL SELECT 'FUNCTION', quote_ident(proname), 3 FROM pg_proc
   WHERE proname LIKE 'baseline%' AND pronamespace = 'public'::regnamespace
  UNION ALL SELECT 'DOMAIN', quote_ident(typname), 4 FROM pg_type
   WHERE typname LIKE 'baseline%' AND typtype = 'd' AND typnamespace = 'public'::regnamespace
  UNION ALL SELECT 'SCHEMA', quote_ident(nspname), 5 FROM pg_namespace
   WHERE nspname LIKE 'baseline%'
) objects ORDER BY o
"""


# -- observing --------------------------------------------------------------------------------


def render(value: Any) -> str:
    """A value as the recordings print it (Go's %v through pgx)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, uuid.UUID):
        return "[" + " ".join(str(b) for b in value.bytes) + "]"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(render(v) for v in value) + "]"
    if isinstance(value, dt.datetime):
        value = value.astimezone(dt.timezone.utc) if value.tzinfo else value
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def observe_error(exc: psycopg.Error) -> dict[str, Any]:
    return {
        "outcome": "error",
        "sqlstate": exc.sqlstate,
        "message": exc.diag.message_primary or str(exc),
    }


def run_step(conn: psycopg.Connection[Any], sql: str) -> dict[str, Any]:
    """One statement over the extended protocol, observed like the recordings."""
    try:
        cur = conn.execute(sql, prepare=False)
    except psycopg.Error as exc:
        return observe_error(exc)
    observation: dict[str, Any] = {"outcome": "ok", "command_tag": cur.statusmessage}
    if cur.description is not None:
        observation["columns"] = [column.name for column in cur.description]
        rows = [[render(v) for v in row] for row in cur.fetchall()]
        if rows:
            observation["rows"] = rows
    return observation


def run_simple(conn: psycopg.Connection[Any], sql: str) -> dict[str, Any]:
    """A simple-protocol query (maybe several statements): raw server text per result."""
    pgconn = conn.pgconn
    pgconn.send_query(sql.encode())
    results: list[dict[str, Any]] = []
    error: dict[str, Any] | None = None
    while (result := pgconn.get_result()) is not None:
        if result.status == psycopg.pq.ExecStatus.FATAL_ERROR:
            sqlstate = result.error_field(psycopg.pq.DiagnosticField.SQLSTATE)
            message = result.error_field(psycopg.pq.DiagnosticField.MESSAGE_PRIMARY)
            error = error or {
                "outcome": "error",
                "sqlstate": (sqlstate or b"").decode(),
                "message": (message or b"").decode(),
            }
            continue
        entry: dict[str, Any] = {"command_tag": (result.command_status or b"").decode()}
        if result.nfields:
            entry["columns"] = [(result.fname(i) or b"").decode() for i in range(result.nfields)]
            rows = [
                [
                    "NULL" if value is None else value.decode()
                    for value in (result.get_value(r, c) for c in range(result.nfields))
                ]
                for r in range(result.ntuples)
            ]
            if rows:
                entry["rows"] = rows
        results.append(entry)
    return error or {"outcome": "ok", "results": results}


# -- comparing --------------------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    group: str
    matched: bool
    differences: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    known_gap: str | None = None


def compare_observation(
    want: dict[str, Any], got: dict[str, Any], *, ignore_rows: bool, where: str
) -> tuple[list[str], list[str]]:
    """(differences that fail, advisory notes)."""
    diffs: list[str] = []
    notes: list[str] = []
    if want["outcome"] != got["outcome"]:
        detail = got.get("sqlstate") or got.get("command_tag")
        diffs.append(f"{where}: outcome {got['outcome']} ({detail}), want {want['outcome']}")
        return diffs, notes
    if want["outcome"] == "error":
        if want.get("sqlstate") != got.get("sqlstate"):
            diffs.append(f"{where}: SQLSTATE {got.get('sqlstate')}, want {want.get('sqlstate')}")
        if want.get("message") != got.get("message"):
            notes.append(f"{where}: message {got.get('message')!r}, want {want.get('message')!r}")
        return diffs, notes
    if "results" in want:
        if len(want["results"]) != len(got.get("results", [])):
            diffs.append(
                f"{where}: {len(got.get('results', []))} results, want {len(want['results'])}"
            )
            return diffs, notes
        for i, (w, g) in enumerate(zip(want["results"], got["results"], strict=True)):
            d, n = compare_result(w, g, ignore_rows=ignore_rows, where=f"{where} result {i}")
            diffs += d
            notes += n
        return diffs, notes
    d, n = compare_result(want, got, ignore_rows=ignore_rows, where=where)
    return diffs + d, notes + n


def compare_result(
    want: dict[str, Any], got: dict[str, Any], *, ignore_rows: bool, where: str
) -> tuple[list[str], list[str]]:
    diffs: list[str] = []
    tag_w, tag_g = want.get("command_tag"), got.get("command_tag")
    counts_rows = ignore_rows and str(tag_w).startswith("SELECT ")
    if tag_w != tag_g and not (counts_rows and str(tag_g).startswith("SELECT ")):
        diffs.append(f"{where}: tag {tag_g!r}, want {tag_w!r}")
    if want.get("columns") != got.get("columns"):
        diffs.append(f"{where}: columns {got.get('columns')}, want {want.get('columns')}")
    if not ignore_rows and want.get("rows") != got.get("rows"):
        diffs.append(f"{where}: rows {got.get('rows')}, want {want.get('rows')}")
    return diffs, []


def compare_case(case: dict[str, Any], got: list[Any]) -> Outcome:
    outcome = Outcome(case["name"], case["group"], True, known_gap=case.get("known_gap"))
    ignore_rows = bool(case.get("ignore_rows"))
    if case.get("sessions") is not None:
        sessions_want = case["sessions"]
        if len(got) != len(sessions_want):
            outcome.differences.append(f"{len(got)} sessions, want {len(sessions_want)}")
        race = bool(case.get("conflict_race"))
        for i, (want_s, got_s) in enumerate(zip(sessions_want, got, strict=False)):
            if len(want_s) != len(got_s):
                outcome.differences.append(f"session {i}: {len(got_s)} steps, want {len(want_s)}")
                continue
            steps = range(len(want_s) - 1) if race else range(len(want_s))
            for j in steps:
                d, n = compare_observation(
                    want_s[j], got_s[j], ignore_rows=ignore_rows, where=f"session {i} step {j}"
                )
                outcome.differences += d
                outcome.notes += n
        if race:

            def failures(sessions: list[list[dict[str, Any]]]) -> list[str]:
                return sorted(
                    s[-1].get("sqlstate", "") for s in sessions if s and s[-1]["outcome"] == "error"
                )

            if failures(sessions_want) != failures(got):
                outcome.differences.append(
                    f"last step failures {failures(got)}, want {failures(sessions_want)}"
                )
    else:
        want_obs = case["observations"]
        if len(want_obs) != len(got):
            outcome.differences.append(f"{len(got)} steps, want {len(want_obs)}")
        for j, (w, g) in enumerate(zip(want_obs, got, strict=False)):
            d, n = compare_observation(w, g, ignore_rows=ignore_rows, where=f"step {j}")
            outcome.differences += d
            outcome.notes += n
    outcome.matched = not outcome.differences or outcome.known_gap is not None
    return outcome


# -- running ----------------------------------------------------------------------------------


def load(directories: Sequence[Path]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The recordings as (file, cases) segments in suite order; absent groups are skipped.

    A file in a later directory replaces a same-named one in an earlier directory.
    """
    files = {p.stem: p for d in directories for p in d.glob("*.json") if _is_recording(p)}
    cases = {name: json.loads(path.read_text())["cases"] for name, path in sorted(files.items())}
    taken: dict[str, set[str]] = {name: set() for name in cases}
    segments: list[tuple[str, list[dict[str, Any]]]] = []
    for group, names in SUITE_ORDER:
        if group not in cases:
            continue
        chosen = [
            case
            for case in cases[group]
            if case["name"] not in taken[group] and (names is None or case["name"] in names)
        ]
        taken[group].update(case["name"] for case in chosen)
        if chosen:
            segments.append((group, chosen))
    known = {group for group, _ in SUITE_ORDER}
    segments += [(name, cases[name]) for name in cases if name not in known]
    return segments


def _is_recording(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("cases"), list)


def run_concurrent(
    connect: Callable[[], psycopg.Connection[Any]], sqls: tuple[str, ...]
) -> list[list[dict[str, Any]]]:
    conns = [connect() for _ in sqls]
    results: list[list[dict[str, Any]]] = [[] for _ in sqls]
    start = threading.Barrier(len(sqls))

    def session(i: int) -> None:
        start.wait()
        for sql in ("BEGIN", sqls[i], "COMMIT"):
            results[i].append(run_step(conns[i], sql))
            time.sleep(0.15)

    threads = [threading.Thread(target=session, args=(i,)) for i in range(len(sqls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for conn in conns:
        conn.close()
    return results


def replay(
    connect: Callable[[], psycopg.Connection[Any]], directories: Sequence[Path]
) -> dict[str, list[Outcome]]:
    """Run every recorded case; return outcomes per file (in replay order)."""
    recordings = load(directories)
    main = connect()
    cleanup(main)
    for sql in FIXTURES + SEEDS:
        main.execute(sql)
    for sql in FIXTURES:
        table = sql.split()[2]
        main.execute(f"SELECT 1 FROM {table} LIMIT 0")
    report: dict[str, list[Outcome]] = {}
    try:
        for name, cases in recordings:
            report.setdefault(name, [])
            for case in cases:
                if case.get("record_only"):
                    continue
                if case.get("sessions") is not None:
                    sqls = SESSIONS.get(case["name"])
                    if sqls is None:
                        report[name].append(
                            Outcome(
                                case["name"], name, False, ["no session SQL known for this case"]
                            )
                        )
                        continue
                    got: list[Any] = run_concurrent(connect, sqls)
                elif case.get("simple_protocol"):
                    got = [run_simple(main, step) for step in case["steps"]]
                else:
                    got = [run_step(main, step) for step in case["steps"]]
                with contextlib.suppress(psycopg.Error):
                    main.execute("ROLLBACK")
                report[name].append(compare_case(case, got))
    finally:
        cleanup(main)
        main.close()
    return report


def cleanup(conn: psycopg.Connection[Any]) -> None:
    for _ in range(3):  # dependent objects first; repeat for what CASCADE left
        for (statement,) in conn.execute(CLEANUP_SQL).fetchall():
            with contextlib.suppress(psycopg.Error):
                conn.execute(statement)


def summary(report: dict[str, list[Outcome]]) -> tuple[list[str], int, int]:
    lines = []
    matched = total = 0
    for name, outcomes in report.items():
        ok = sum(o.matched for o in outcomes)
        gaps = sum(o.matched and o.known_gap is not None and bool(o.differences) for o in outcomes)
        lines.append(
            f"{name}: {ok}/{len(outcomes)} matched"
            + (f" ({gaps} with a known gap)" if gaps else "")
        )
        matched += ok
        total += len(outcomes)
    lines.append(f"conformance: {matched}/{total} cases matched")
    return lines, matched, total


def recordings_dirs() -> list[Path]:
    """Where recordings are read from; a later directory's file replaces an earlier one's.

    The vendored copy, then ``$DSQL_RECORDINGS`` (directories separated by ``os.pathsep``) or,
    when that is unset, ``../shared/dsql-recordings`` if it exists.
    """
    named = os.environ.get("DSQL_RECORDINGS")
    if named:
        return [VENDORED_RECORDINGS, *(Path(d) for d in named.split(os.pathsep) if d)]
    extra = [DEFAULT_RECORDINGS] if DEFAULT_RECORDINGS.is_dir() else []
    return [VENDORED_RECORDINGS, *extra]


def missing_dirs(directories: Sequence[Path]) -> list[Path]:
    """The directories that do not exist (a mistyped ``$DSQL_RECORDINGS``)."""
    return [d for d in directories if not d.is_dir()]


def main() -> int:
    from dsqlkit.testing import LocalDsql

    directories = recordings_dirs()
    if missing := missing_dirs(directories):
        print(f"no recordings at {', '.join(map(str, missing))} (check DSQL_RECORDINGS)")
        return 2
    divergences = json.loads(DIVERGENCES.read_text())
    with LocalDsql() as local:
        report = replay(
            lambda: psycopg.connect(local.conninfo(), autocommit=True, prepare_threshold=None),
            directories,
        )
    for outcomes in report.values():
        for o in outcomes:
            if not o.matched or o.differences:
                label = (
                    "ACCEPTED" if o.name in divergences else ("GAP" if o.matched else "MISMATCH")
                )
                print(f"  {label} {o.group}/{o.name}: " + "; ".join(o.differences))
    lines, _, _ = summary(report)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    sys.exit(main())
