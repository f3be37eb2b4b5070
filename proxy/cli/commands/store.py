"""the shared store (store.backend: postgres): migrate a state_dir into it, verify, status

`strangler store migrate --from-state-dir DIR -c routes.yaml` imports a replica's file audit
trail (DIR/audit.log, verified first), its outbox and its pending approvals into the PostgreSQL
store that routes.yaml's `store` names. Each imported entry keeps its exact line (so its hash)
and joins the fleet's chain; the imported lines still chain among themselves, which `history
--verify` checks. Running it again imports only what is missing. diffs.sqlite3 is not imported:
shadow evidence starts afresh with every step anyway. `strangler store verify` checks the fleet's
chain without a running proxy (exit 1 when broken); `strangler store status` shows the schema
version, the chain's head and the replicas that wrote to it. The DSN comes from the environment
variable `store.dsn_env`, never from an argument.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from proxy.cli.client import print_json
from proxy.cli.commands._common import add_config_option, load_or_report
from proxy.cli.exitcodes import FAILED, OK, USAGE

USES_ADMIN_API = False
BATCH = 500


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("migrate", "verify", "status"),
                   help="migrate a state_dir in, verify the fleet's chain, or show status")
    add_config_option(p)
    p.add_argument("--from-state-dir", metavar="DIR",
                   help="migrate: the state_dir whose audit.log (and approvals) to import")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _fail(message: str, code: int = USAGE) -> int:
    print(f"strangler store: {message}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    config = load_or_report(args.config)
    if isinstance(config, int):
        return config
    if not config.store.shared:
        return _fail(f"{args.config}: store.backend is {config.store.backend}; these commands "
                     "work on a shared store (store: {backend: postgres})")
    from shadow import pg

    try:
        dsn = pg.dsn(config.store)
    except ValueError as exc:
        return _fail(str(exc))
    link = pg.Link(config.store, dsn, "strangler-store-cli")
    try:
        with link.lock:
            conn = link.conn()
            if args.action == "migrate":
                if not args.from_state_dir:
                    return _fail("migrate needs --from-state-dir DIR")
                return _migrate(conn, Path(args.from_state_dir), args.json)
            if args.from_state_dir:
                return _fail("--from-state-dir is for migrate")
            return _verify(conn, args.json) if args.action == "verify" else \
                _status(conn, pg.display(dsn), args.json)
    except pg.StoreUnavailable as exc:
        return _fail(f"the shared store {pg.display(dsn)} is unavailable: {exc}", FAILED)
    finally:
        link.close()


def _verify(conn: Any, as_json: bool) -> int:
    from proxy.control.audit_pg import verify_chain

    result = verify_chain(conn)
    body = {"ok": result.ok, "entries": result.entries, "bad_line": result.bad_line,
            "message": result.message, "suspect_lines": list(result.suspect_lines)}
    if as_json:
        print_json(body)
    elif result.ok:
        print(f"audit trail OK: {result.message}")
    if not result.ok:
        print(f"audit trail BROKEN: {result.message}", file=sys.stderr)
        return FAILED
    return OK


def _status(conn: Any, shown: str, as_json: bool) -> int:
    from shadow import pg

    seq, head = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
    replicas = conn.execute("SELECT replica, COUNT(*), MAX(seq) FROM audit_entries "
                            "GROUP BY replica ORDER BY MAX(seq) DESC").fetchall()
    approvals = conn.execute("SELECT COUNT(*) FROM approvals").fetchone()[0]
    body = {"store": shown, "schema_version": pg.schema_version(conn), "entries": seq,
            "head": head, "approvals_pending": approvals,
            "replicas": [{"replica": r, "entries": n, "last_seq": last}
                         for r, n, last in replicas]}
    if as_json:
        print_json(body)
        return OK
    print(f"{shown}: schema {body['schema_version']}, {seq} audit entries (head {head[:12]}), "
          f"{approvals} pending approval{'s' if approvals != 1 else ''}")
    for r in body["replicas"]:
        print(f"  {r['replica']}: {r['entries']} entries, last seq {r['last_seq']}")
    return OK


def imported_entries(lines: list[bytes], source: str) -> list[dict]:
    """The fleet entries of a file trail's lines: the original fields (what `history` shows),
    the exact line under `imported` (its hash is what the file chained), a uid from that hash
    (importing twice adds nothing)."""
    out = []
    for raw in lines:
        entry = json.loads(raw)
        digest = hashlib.sha256(raw).hexdigest()
        content = {k: v for k, v in entry.items() if k not in ("seq", "prev")}
        content.update(uid=f"import:{digest}", replica=str(entry.get("replica") or "import"),
                       imported={"source": source, "line": raw.decode(), "hash": digest,
                                 "seq": entry.get("seq")})
        out.append(content)
    return out


def _migrate(conn: Any, directory: Path, as_json: bool) -> int:
    from proxy.control.audit import AuditLog
    from proxy.control.audit_pg import append_rows
    from proxy.control.outbox import Outbox

    if not directory.is_dir():
        return _fail(f"--from-state-dir {directory}: not a directory")
    log_path = directory / "audit.log"
    trail = AuditLog(log_path)
    result = trail.verify()
    if not result.ok:
        return _fail(f"{log_path}: the file trail is broken ({result.message}); nothing was "
                     "imported. Inspect it with `strangler history --verify --state-dir "
                     f"{directory}`", FAILED)
    lines = [ln for ln in log_path.read_bytes().split(b"\n") if ln.strip()] \
        if log_path.exists() else []
    source = str(directory.resolve() / "audit.log")
    batch = imported_entries(lines, source)
    outbox = Outbox(directory / "audit.outbox")
    batch += outbox.pending()  # a replica of the shared store stopped while it was down
    before = conn.execute("SELECT seq FROM audit_head WHERE id = 1").fetchone()[0]
    for i in range(0, len(batch), BATCH):
        append_rows(conn, batch[i:i + BATCH])
    after = conn.execute("SELECT seq FROM audit_head WHERE id = 1").fetchone()[0]
    approvals = _migrate_approvals(conn, directory / "approvals.json")
    added = after - before
    body = {"source": str(directory), "file_entries": len(lines),
            "outbox_entries": len(batch) - len(lines), "added": added,
            "already_there": len(batch) - added,
            "fleet_seq": [before + 1, after] if added else None,
            "approvals_imported": approvals}
    if as_json:
        print_json(body)
    else:
        span = f" as entries {before + 1}-{after}" if added else ""
        print(f"imported {added} of {len(batch)} entries from {directory}{span} "
              f"({len(batch) - added} already in the shared trail); {approvals} pending "
              "approval(s). The file trail is left as it was. Check: strangler history --verify")
    return OK


def _migrate_approvals(conn: Any, path: Path) -> int:
    from proxy.control.approvals import FileApprovals

    if not path.exists():
        return 0
    n = 0
    for req in FileApprovals(path).all():
        cur = conn.execute("INSERT INTO approvals (route, id, data) VALUES (%s, %s, %s) "
                           "ON CONFLICT (route) DO NOTHING",
                           (req.route, req.id, json.dumps(req.to_dict(), sort_keys=True)))
        n += cur.rowcount
    return n
