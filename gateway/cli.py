"""`rag-gateway` command line: serve, keys, policy. Every subcommand takes --config FILE."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.policy import TENANT_RE, Policy, hash_key, new_key, validate_dir

SCHEMA_FILE = "schema.json"


def _config(args: argparse.Namespace) -> GatewayConfig:
    return load_config(Path(args.config) if args.config else None)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    config = _config(args)  # fail here, with a readable message, rather than in a worker
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    workers = args.workers or config.server.workers
    if args.config:
        os.environ["RAG_GATEWAY_CONFIG"] = str(Path(args.config).resolve())
    else:
        os.environ.pop("RAG_GATEWAY_CONFIG", None)
    # uvicorn re-raises the signal it caught once it has drained; with our own (no-op) handlers in
    # place that re-raise lands here instead of killing the process, so a drained SIGTERM exits 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    uvicorn.run(
        "gateway.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        timeout_graceful_shutdown=config.server.drain_timeout_s,
        log_level=args.log_level,
    )
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    key = new_key()
    print(f"New API key for tenant {args.tenant!r} (shown once; store it now):\n\n  {key}\n")
    print(f'Add this line under api_keys: in policies/{args.tenant}.yaml:\n\n  - "{hash_key(key)}"')
    return 0


def _policies_dir(args: argparse.Namespace) -> Path:
    if args.dir:
        return Path(args.dir)
    config = _config(args)
    return config.resolve(config.policies_dir) if config.policies_dir else Path("policies")


def cmd_policy_validate(args: argparse.Namespace) -> int:
    directory = _policies_dir(args)
    policies, problems = validate_dir(directory)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {directory}", file=sys.stderr)
        return 1
    print(f"{directory}: {len(policies)} tenant policies valid ({', '.join(p.tenant for p in policies)})")
    return 0


def policy_schema() -> dict:
    schema = Policy.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "rag-gateway tenant policy"
    return schema


def cmd_policy_schema(args: argparse.Namespace) -> int:
    text = json.dumps(policy_schema(), indent=2, sort_keys=True) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    return 0


def _retrieval(config: GatewayConfig) -> Any:
    from gateway.services import build_retrieval, load_local_embedder

    embedder = load_local_embedder(config.retrieval.embedding_model)
    return build_retrieval(config, embedder)["retrieval"]


def _check_tenant(tenant: str) -> None:
    if not TENANT_RE.match(tenant):
        raise ConfigError(f"--tenant {tenant!r}: tenant ids are lower-case letters, digits, '-' and '_'")


def cmd_ingest(args: argparse.Namespace) -> int:
    from gateway.retrieval.ingest import Ingestor, format_report
    from gateway.services import ingest_settings

    _check_tenant(args.tenant)
    config = _config(args)
    retrieval = _retrieval(config)
    ingestor = Ingestor(retrieval.store.tenant(args.tenant), retrieval.embedder, ingest_settings(config))
    report = ingestor.ingest_paths(args.tenant, [Path(p) for p in args.paths], sync=args.sync)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 1 if report.failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rag-gateway", description="OpenAI-compatible gateway for production RAG"
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", help="gateway.yaml (default: embedded defaults)")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[common], help="run the gateway")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    serve.set_defaults(func=cmd_serve)

    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser(
        "create", parents=[common], help="print a new key and the hash to put in the policy"
    )
    create.add_argument("--tenant", required=True)
    create.set_defaults(func=cmd_keys_create)

    ingest = sub.add_parser(
        "ingest", parents=[common], help="ingest files and folders into a tenant's corpus"
    )
    ingest.add_argument("--tenant", required=True)
    ingest.add_argument("--sync", action="store_true", help="also remove documents that are no longer there")
    ingest.add_argument("--json", action="store_true", help="print the report as JSON")
    ingest.add_argument("paths", nargs="+", metavar="PATH")
    ingest.set_defaults(func=cmd_ingest)

    policy = sub.add_parser("policy", help="tenant policies").add_subparsers(
        dest="policy_command", required=True
    )
    validate = policy.add_parser("validate", parents=[common], help="check every policy file")
    validate.add_argument("dir", nargs="?", help="policies folder (default: policies_dir from the config)")
    validate.set_defaults(func=cmd_policy_validate)
    schema = policy.add_parser("schema", parents=[common], help="export the policy JSON schema")
    schema.add_argument("--output", default="-", help="file to write (default: stdout)")
    schema.set_defaults(func=cmd_policy_schema)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"rag-gateway: {exc}", file=sys.stderr)
        return 2
