"""`dicom-node`: argument parsing only; each command calls bootstrap and one service function."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, TypeVar

from dicom_node.api_root import api_context, api_server
from dicom_node.bootstrap import (
    build_node,
    configure_file_tools,
    deid_keys,
    upgrade_database,
)
from dicom_node.core.errors import DicomNodeError
from dicom_node.core.observability import configure_logging
from dicom_node.core.settings import Settings, load_settings, parse_ae_title
from dicom_node.dicom.deid import DeidPolicy
from dicom_node.dicom.deid_conformance import conformance_lines
from dicom_node.processes import run_node
from dicom_node.services import access_admin, audit_trail, auth, deid_files
from dicom_node.services import peers as peer_service
from dicom_node.services.views import MAX_PAGE_SIZE, Page, PageRequest
from storage import migrate
from storage.models import Role

if TYPE_CHECKING:
    from dicom_node.services.node import Node

T = TypeVar("T")


def _ae_title(value: str) -> str:
    try:
        return parse_ae_title(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _port(value: str) -> int:
    port = int(value)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError("a port is 1-65535")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicom-node", description="A DICOM node that never loses an instance."
    )
    parser.add_argument("--config", type=Path, help="TOML settings file (also DICOM_NODE_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser(
        "serve", help="run everything: SCP receivers, study completion, job workers (WORKERS), admin API"
    )
    commands.add_parser("scp", help="run only the DICOM receivers (scale-out against PostgreSQL)")
    commands.add_parser("worker", help="run only job workers, WORKERS processes (scale-out)")

    commands.add_parser("api", help="run only the admin API and /metrics (API_HOST:API_PORT)")
    token = commands.add_parser("token", help="machine tokens for the admin API").add_subparsers(
        dest="token_command", required=True
    )
    create = token.add_parser("create", help="create a token; it is printed once, as the last line")
    create.add_argument("--role", required=True, choices=[role.value for role in Role])
    create.add_argument("--name", required=True, help="what the token is for, e.g. the RIS host")
    tokens = token.add_parser("list", help="list tokens (machine tokens and users' sessions)")
    tokens.add_argument("--active", action="store_true", help="only tokens that still work")
    revoke = token.add_parser("revoke", help="revoke a token by its id (tok_...); it stops working at once")
    revoke.add_argument("token_id")
    user = commands.add_parser("user", help="admin API users").add_subparsers(
        dest="user_command", required=True
    )
    add_user = user.add_parser("add", help="add a user; the password is read from stdin (one line)")
    add_user.add_argument("username")
    add_user.add_argument("--role", required=True, choices=[role.value for role in Role])
    user.add_parser("list", help="list users, their roles, and whether they are disabled or locked")
    change = user.add_parser("update", help="change a user's role, disable or enable it, or unlock it")
    change.add_argument("username")
    change.add_argument("--role", choices=[role.value for role in Role])
    enabled = change.add_mutually_exclusive_group()
    enabled.add_argument("--disable", dest="disabled", action="store_const", const=True)
    enabled.add_argument("--enable", dest="disabled", action="store_const", const=False)
    change.add_argument("--unlock", action="store_true", help="lift a lockout after failed logins")
    change.add_argument(
        "--password-stdin", action="store_true", help="set a new password read from stdin (ends its sessions)"
    )

    export = commands.add_parser("audit-export", help="print audit events as RFC 5424 syslog lines")
    export.add_argument("--after-id", type=int, default=0, help="only events after this id (resume point)")
    commands.add_parser(
        "deid-conformance", help="print PS3.2 Table N.11-6 (de-identified elements and actions)"
    )
    commands.add_parser("verify-audit", help="check the audit trail's hash chain; exit 1 on a break")

    db = commands.add_parser("db", help="database administration").add_subparsers(
        dest="db_command", required=True
    )
    db.add_parser("upgrade", help="migrate the database to the newest schema")
    db.add_parser("current", help="print the schema revision the database is at")

    peer = commands.add_parser("peer", help="remote AEs").add_subparsers(dest="peer_command", required=True)
    add = peer.add_parser("add", help="add a remote AE")
    add.add_argument("ae_title", type=_ae_title)
    add.add_argument("host")
    add.add_argument("port", type=_port)
    add.add_argument("--push-results", action="store_true", help="send AI result SRs to this AE")
    peer.add_parser("list", help="list remote AEs")
    move = peer.add_parser("update", help="change a remote AE's address or whether results are pushed to it")
    move.add_argument("ae_title", type=_ae_title)
    move.add_argument("--host")
    move.add_argument("--port", type=_port)
    move.add_argument("--push-results", action=argparse.BooleanOptionalAction, default=None)
    remove = peer.add_parser("remove", help="remove a remote AE")
    remove.add_argument("ae_title", type=_ae_title)
    echo = peer.add_parser("echo", help="C-ECHO a remote AE as this node; exit 1 when it does not answer")
    echo.add_argument("ae_title", type=_ae_title)

    deid = commands.add_parser(
        "deidentify",
        help="de-identify a DICOM file or directory tree into OUT (same relative tree)",
        description="De-identify with the node's engine (PS3.15 Basic Profile, keyed and deterministic). "
        "The secret comes from --secret-file or DICOM_NODE_DEID_SECRET (64 hex digits). File and "
        "directory names are kept as they are: rename inputs named after patients first.",
    )
    deid.add_argument("input", type=Path, metavar="IN")
    deid.add_argument("output", type=Path, metavar="OUT")
    deid.add_argument("--secret-file", type=Path, help="32-byte secret file, mode 0600 (as the node writes)")
    deid.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    deid.add_argument("--issuer", default="DICOM_NODE", help="issuer of patient IDs for files that name none")
    return parser


def _run_db(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    if args.db_command == "upgrade":
        upgrade_database(settings)
        out.write(f"database at revision {migrate.head_revision()}\n")
        return 0
    out.write(f"{migrate.current_revision(settings.resolved_database_url) or 'none'}\n")
    return 0


def _run_peer(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    upgrade_database(settings)
    node = build_node(settings)
    try:
        with node.sessions.begin() as session:
            if args.peer_command == "add":
                view = peer_service.add_peer(
                    session,
                    ae_title=args.ae_title,
                    host=args.host,
                    port=args.port,
                    push_results=args.push_results,
                    now=node.clock.now(),
                )
                out.write(f"added {view.ae_title} {view.host}:{view.port}\n")
            elif args.peer_command == "update":
                view = peer_service.update_peer(
                    session,
                    ae_title=args.ae_title,
                    host=args.host,
                    port=args.port,
                    push_results=args.push_results,
                    now=node.clock.now(),
                )
                push = " push-results" if view.push_results else ""
                out.write(f"updated {view.ae_title} {view.host}:{view.port}{push}\n")
            elif args.peer_command == "list":
                for view in peer_service.list_peers(session):
                    push = " push-results" if view.push_results else ""
                    out.write(f"{view.ae_title}\t{view.host}\t{view.port}{push}\n")
            elif args.peer_command == "echo":
                peer = peer_service.get_peer(session, ae_title=args.ae_title)
            else:
                peer_service.remove_peer(session, ae_title=args.ae_title, now=node.clock.now())
                out.write(f"removed {args.ae_title}\n")
    finally:
        node.engine.dispose()
    if args.peer_command == "echo":
        result = peer_service.echo_peer(peer, calling_ae_title=settings.ae_title)
        status = "none" if result.status is None else f"0x{result.status:04X}"
        outcome = "success" if result.success else "failed"
        out.write(f"echo {result.ae_title}: {outcome} (status {status}, {result.elapsed_ms} ms)\n")
        return 0 if result.success else 1
    return 0


def _run_token(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    upgrade_database(settings)
    node = build_node(settings)
    try:
        if args.token_command == "list":
            _write_tokens(node, out, active=True if args.active else None)
            return 0
        if args.token_command == "revoke":
            view = access_admin.revoke_token(node, args.token_id, actor="cli")
            out.write(f"revoked {view.kind} token {view.id}\n")
            return 0
        issued = auth.create_machine_token(node, role=Role(args.role), name=args.name)
    finally:
        node.engine.dispose()
    out.write(f"created {args.role} token {issued.token_id} for {args.name}; it is shown only now:\n")
    out.write(f"{issued.token}\n")
    return 0


def _pages(fetch: Callable[[PageRequest], Page[T]]) -> Iterator[T]:
    """Every item of a paged list, a page at a time."""
    page = 1
    while True:
        answer = fetch(PageRequest(page=page, page_size=MAX_PAGE_SIZE))
        yield from answer.items
        if page * MAX_PAGE_SIZE >= answer.total:
            return
        page += 1


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "-"


def _write_tokens(node: Node, out: TextIO, *, active: bool | None) -> None:
    out.write("id\tkind\trole\tname\tcreated\texpires\trevoked\tlast_used\n")
    for view in _pages(lambda request: access_admin.list_tokens(node, request, active=active)):
        name = view.name or view.user_id or "-"
        times = "\t".join(
            _when(t) for t in (view.created_at, view.expires_at, view.revoked_at, view.last_used_at)
        )
        out.write(f"{view.id}\t{view.kind}\t{view.role}\t{name}\t{times}\n")


def _run_user(settings: Settings, args: argparse.Namespace, out: TextIO, stdin: TextIO) -> int:
    reads_password = args.user_command == "add" or getattr(args, "password_stdin", False)
    password = stdin.readline().rstrip("\n") if reads_password else None
    upgrade_database(settings)
    node = build_node(settings)
    try:
        if args.user_command == "list":
            out.write("id\tusername\trole\tstate\tlast_login\n")
            for view in _pages(lambda request: access_admin.list_users(node, request)):
                state = "disabled" if view.disabled else "locked" if view.locked_until else "active"
                out.write(f"{view.id}\t{view.username}\t{view.role}\t{state}\t{_when(view.last_login_at)}\n")
            return 0
        if args.user_command == "update":
            view = access_admin.update_user(
                node,
                access_admin.user_id_of(node, args.username),
                role=Role(args.role) if args.role else None,
                disabled=args.disabled,
                unlock=args.unlock,
                password=password,
                actor="cli",
            )
            state = "disabled" if view.disabled else "enabled"
            out.write(f"updated user {view.id}: {view.role}, {state}\n")
            return 0
        user_id = auth.add_user(node, username=args.username, password=password or "", role=Role(args.role))
    finally:
        node.engine.dispose()
    out.write(f"added user {user_id} ({args.role})\n")
    return 0


def _run_api(settings: Settings) -> int:
    configure_logging(settings.log_level)
    upgrade_database(settings)
    node = build_node(settings)
    try:
        api_server(settings, api_context(settings, node)).run()
    finally:
        node.engine.dispose()
    return 0


def _run_audit_export(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    node = build_node(settings)
    try:
        for line in audit_trail.syslog_export(node, after_id=args.after_id):
            out.write(line + "\n")
    finally:
        node.engine.dispose()
    return 0


def _run_verify_audit(settings: Settings, out: TextIO) -> int:
    node = build_node(settings)
    try:
        result = audit_trail.verify(node)
    finally:
        node.engine.dispose()
    if result.intact:
        out.write(f"audit chain intact: {result.checked} events\n")
        return 0
    out.write(
        f"audit chain broken at event {result.broken_at} [{result.reason}] after {result.checked} intact\n"
    )
    return 1


def _run_deidentify(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    """One line per file (`ok IN OUT` or `failed IN CODE`), a summary, exit 1 when any file failed."""
    keys = deid_keys(settings, secret_file=args.secret_file)
    policy = DeidPolicy(default_issuer=args.issuer, node_ae_title=settings.ae_title)
    configure_file_tools()
    done = failed = 0
    for outcome in deid_files.deidentify_tree(
        args.input, args.output, policy, keys, jobs=max(1, args.jobs), initializer=configure_file_tools
    ):
        if outcome.ok:
            done += 1
            out.write(f"ok\t{outcome.source}\t{outcome.target}\n")
        else:
            failed += 1
            out.write(f"failed\t{outcome.source}\t{outcome.code}\n")
    out.write(f"de-identified {done}, failed {failed} (key {keys.key_id})\n")
    return 1 if failed else 0


def main(argv: list[str] | None = None, out: TextIO | None = None, stdin: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        if args.command == "serve":
            return run_node(settings, out, receivers=True, workers=settings.workers, api=True)
        if args.command == "scp":
            return run_node(settings, out, receivers=True, workers=0)
        if args.command == "worker":
            return run_node(settings, out, receivers=False, workers=max(1, settings.workers))
        if args.command == "db":
            return _run_db(settings, args, out)
        if args.command == "api":
            return _run_api(settings)
        if args.command == "token":
            return _run_token(settings, args, out)
        if args.command == "user":
            return _run_user(settings, args, out, stdin or sys.stdin)
        if args.command == "audit-export":
            return _run_audit_export(settings, args, out)
        if args.command == "deid-conformance":
            out.writelines(line + "\n" for line in conformance_lines())
            return 0
        if args.command == "verify-audit":
            return _run_verify_audit(settings, out)
        if args.command == "deidentify":
            return _run_deidentify(settings, args, out)
        return _run_peer(settings, args, out)
    except DicomNodeError as exc:
        sys.stderr.write(f"dicom-node: {exc.message} [{exc.code}]\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
