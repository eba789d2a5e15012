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
from gateway.errors import VectorStoreUnavailable
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
    if workers > 1:
        _share_metrics_between_workers()
    if args.config:
        os.environ["RAG_GATEWAY_CONFIG"] = str(Path(args.config).resolve())
    else:
        os.environ.pop("RAG_GATEWAY_CONFIG", None)
    # uvicorn re-raises the signal it caught once it has drained; with our own (no-op) handlers in
    # place that re-raise lands here instead of killing the process, so a drained SIGTERM exits 0.
    # Read by gateway.server_protocol in each worker (uvicorn builds the protocol class by name).
    os.environ["RAG_GATEWAY_HEADER_TIMEOUT_S"] = str(config.server.header_timeout_s)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    uvicorn.run(
        "gateway.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="gateway.server_protocol:HeaderTimeoutProtocol",
        lifespan="on",
        access_log=False,
        proxy_headers=False,  # the gateway reads no forwarded headers; skip the per-request middleware
        timeout_graceful_shutdown=config.server.drain_timeout_s,
        log_level=args.log_level,
    )
    return 0


def _share_metrics_between_workers() -> None:
    """Point every worker's metrics at one folder so /metrics reports all of them (gateway.metrics)."""
    import atexit
    import shutil
    import tempfile

    from gateway.metrics import MULTIPROCESS_ENV

    folder = os.environ.get(MULTIPROCESS_ENV)
    if folder:  # the operator's choice: start it empty, as prometheus_client requires
        Path(folder).mkdir(parents=True, exist_ok=True)
        for stale in Path(folder).glob("*.db"):
            stale.unlink()
    else:
        folder = tempfile.mkdtemp(prefix="rag-gateway-metrics-")
        os.environ[MULTIPROCESS_ENV] = folder
        atexit.register(shutil.rmtree, folder, ignore_errors=True)


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
    configured = [m.name for m in _config(args).models]
    policies, problems = validate_dir(directory, configured)
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
    from gateway.services import load_embedder, open_retrieval

    embedder = load_embedder(config.retrieval.embedding_model, config)
    return open_retrieval(config, embedder)[0]


def _check_tenant(tenant: str) -> None:
    if not TENANT_RE.match(tenant):
        raise ConfigError(f"--tenant {tenant!r}: tenant ids are lower-case letters, digits, '-' and '_'")


def cmd_ingest(args: argparse.Namespace) -> int:
    from gateway.progress import with_progress
    from gateway.retrieval.ingest import Ingestor, IngestReport, format_report
    from gateway.services import ingest_settings

    _check_tenant(args.tenant)
    config = _config(args)
    retrieval = _retrieval(config)
    ingestor = Ingestor(retrieval.store.tenant(args.tenant), retrieval.embedder, ingest_settings(config))
    report = IngestReport(args.tenant)
    paths = [Path(p) for p in args.paths]
    with_progress(
        f"ingest {args.tenant}",
        report,
        lambda: ingestor.ingest_paths(args.tenant, paths, sync=args.sync, report=report),
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return 1 if report.failed else 0


def cmd_reindex(args: argparse.Namespace) -> int:
    from gateway.progress import with_progress
    from gateway.retrieval.ingest import IngestReport
    from gateway.retrieval.reindex import reindex
    from gateway.services import ingest_settings

    _check_tenant(args.tenant)
    config = _config(args)
    retrieval = _retrieval(config)
    report = IngestReport(args.tenant)
    paths = [Path(p) for p in args.paths] or None
    result = with_progress(
        f"reindex {args.tenant}",
        report,
        lambda: reindex(
            retrieval.store, retrieval.embedder, args.tenant, paths, ingest_settings(config), report=report
        ),
    )
    print(
        f"tenant {result.tenant}: rebuilt {result.documents} documents ({result.chunks} chunks) into "
        f"{result.new_collection} in {result.seconds:.1f}s, replacing {result.old_collection}; "
        f"corpus version {result.corpus_version}"
    )
    return 0


def _tenant_policy(config: GatewayConfig, tenant: str) -> Policy:
    from gateway.app import demo_policy

    if config.policies_dir:
        policies, _ = validate_dir(config.resolve(config.policies_dir))
        for policy in policies:
            if policy.tenant == tenant:
                return policy
    return demo_policy() if tenant == "demo" else Policy(tenant=tenant)


def _policy_file(config: GatewayConfig, tenant: str) -> Path:
    if not config.policies_dir:
        raise ConfigError("calibrate writes into the tenant's policy file: pass --config with a policies_dir")
    return config.resolve(config.policies_dir) / f"{tenant}.yaml"


def _golden_run(args: argparse.Namespace) -> tuple[GatewayConfig, list[Any]]:
    """The checked tenant, the config and the golden queries every eval command starts from."""
    from gateway.evaluation.golden import GoldenError, load_golden

    _check_tenant(args.tenant)
    config = _config(args)
    try:
        return config, load_golden(Path(args.golden))
    except GoldenError as exc:
        raise ConfigError(str(exc)) from exc


def cmd_eval_retrieval(args: argparse.Namespace) -> int:
    from gateway.evaluation.retrieval_eval import compare_to_baseline, evaluate, format_report

    config, queries = _golden_run(args)
    policy = _tenant_policy(config, args.tenant)
    threshold = args.min_confidence if args.min_confidence is not None else policy.retrieval.min_confidence
    retrieval = _retrieval(config)
    report = evaluate(
        retrieval,
        args.tenant,
        queries,
        threshold,
        policy.retrieval.candidates,
        dict(policy.retrieval.filters) or None,
    )
    if args.write_baseline:
        Path(args.write_baseline).write_text(json.dumps(report.to_dict(with_queries=False), indent=2) + "\n")
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    if args.baseline:
        baseline = json.loads(Path(args.baseline).read_text())
        regressions = compare_to_baseline(report.metrics, baseline, args.tolerance)
        for line in regressions:
            print(f"REGRESSION {line}", file=sys.stderr)
        if regressions:
            return 1
        print(f"no metric worse than {args.baseline} by more than {args.tolerance}", file=sys.stderr)
    return 0


def cmd_eval_import_beir(args: argparse.Namespace) -> int:
    from gateway.evaluation.datasets import DatasetError, import_beir
    from gateway.evaluation.golden import write_golden

    return _import(
        args,
        lambda ingestor: import_beir(
            Path(args.dir), ingestor, args.tenant, args.split, args.unanswerable_fraction, args.seed
        ),
        DatasetError,
        write_golden,
    )


def cmd_eval_import_pubmedqa(args: argparse.Namespace) -> int:
    from gateway.evaluation.datasets import DatasetError, import_pubmedqa
    from gateway.evaluation.golden import write_golden

    return _import(
        args,
        lambda ingestor: import_pubmedqa(
            Path(args.file), ingestor, args.tenant, args.answerable_fraction, args.seed
        ),
        DatasetError,
        write_golden,
    )


def _import(args: argparse.Namespace, run: Any, error_type: type[Exception], write_golden: Any) -> int:
    from gateway.retrieval.ingest import Ingestor
    from gateway.services import ingest_settings

    _check_tenant(args.tenant)
    config = _config(args)
    retrieval = _retrieval(config)
    ingestor = Ingestor(retrieval.store.tenant(args.tenant), retrieval.embedder, ingest_settings(config))
    try:
        result = run(ingestor)
    except error_type as exc:
        raise ConfigError(str(exc)) from exc
    write_golden(Path(args.golden_out), result.queries)
    counts = result.report.counts()
    answerable = sum(q.answerable for q in result.queries)
    print(
        f"tenant {args.tenant}: {result.documents_ingested} documents in the corpus ({counts}), "
        f"{result.documents_held_out} held out; {result.report.chunks_embedded} chunks embedded in "
        f"{result.report.seconds:.0f}s; corpus version {result.report.corpus_version}"
    )
    print(
        f"wrote {args.golden_out}: {len(result.queries)} queries, {answerable} answerable, "
        f"{len(result.queries) - answerable} unanswerable"
    )
    return 0


def cmd_eval_answers(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.app import Gateway
    from gateway.evaluation.answer_eval import evaluate_answers, summarise_answers

    config, queries = _golden_run(args)
    if config.model(args.model) is None:
        raise ConfigError(f"--model {args.model!r} is not a model in the gateway config")

    async def run() -> dict[str, Any]:
        gateway = Gateway(_quiet(config))
        await gateway.start()
        try:
            policy = gateway.policies.snapshot.policies.get(args.tenant)
            if policy is None:
                raise ConfigError(f"no tenant {args.tenant!r} is configured")
            outcomes = await evaluate_answers(gateway, policy, args.model, queries, args.judge)
            return summarise_answers(outcomes)
        finally:
            await gateway.stop()

    summary = asyncio.run(run())
    print(json.dumps(summary, indent=2))
    return 0 if summary["citation_validity"] in (None, 1.0) else 1


def cmd_eval_calibrate(args: argparse.Namespace) -> int:
    from gateway.evaluation.calibrate import choose_threshold, format_table, trade_offs, write_min_confidence
    from gateway.evaluation.retrieval_eval import evaluate

    config, queries = _golden_run(args)
    if all(q.answerable for q in queries) or not any(q.answerable for q in queries):
        raise ConfigError(f"{args.golden}: calibration needs both answerable and unanswerable queries")
    policy_file = None if args.dry_run else _policy_file(config, args.tenant)
    policy = _tenant_policy(config, args.tenant)
    report = evaluate(
        _retrieval(config),
        args.tenant,
        queries,
        policy.retrieval.min_confidence,
        policy.retrieval.candidates,
        dict(policy.retrieval.filters) or None,
    )
    rows = trade_offs(report.queries)
    print(format_table(rows))
    chosen = choose_threshold(rows, args.target_refusal_precision)
    if chosen is None:
        print(
            f"no threshold reaches a refusal precision of {args.target_refusal_precision}; policy unchanged",
            file=sys.stderr,
        )
        return 1
    print(
        f"\nmin_confidence {chosen.threshold}: refusal precision {chosen.refusal_precision:.3f}, refuses "
        f"{chosen.refused_unanswerable:.1%} of unanswerable and {chosen.refused_answerable:.1%} of answerable"
    )
    if policy_file is not None:
        write_min_confidence(policy_file, chosen.threshold)
        print(f"wrote retrieval.min_confidence: {chosen.threshold} into {policy_file}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from gateway.replay import replay_retrieval
    from gateway.request_log import find_entry

    config = _config(args)
    log_path = args.log or config.telemetry.request_log.path
    if not log_path:
        raise ConfigError(
            "replay reads the request log file: set telemetry.request_log.path or pass --log FILE"
        )
    entry = find_entry(config.resolve(str(log_path)), args.request_id)
    if entry is None:
        print(f"request {args.request_id} is not in {log_path} (or its rotated files)", file=sys.stderr)
        return 2
    status = 0
    retrieval = entry.get("retrieval")
    if retrieval and retrieval.get("query") is None:
        print(
            f"request {args.request_id} was logged without its question: tenant {entry.get('tenant')!r} "
            "has log_content: false, so no prompt or query text is kept. Replay needs the question; "
            "set log_content: true in the tenant's policy to make later requests replayable.",
            file=sys.stderr,
        )
        return 2
    if retrieval:
        result = replay_retrieval(entry, _retrieval(config))
        print("\n".join(result.lines))
        status = 0 if result.identical else 1
    else:
        print(f"request {args.request_id} made no retrieval; nothing to compare")
    if args.full:
        status = max(status, _replay_full(config, entry))
    return status


def _replay_full(config: GatewayConfig, entry: dict[str, Any]) -> int:
    """Send the logged request through the tenant's chain again, in-process."""
    import asyncio

    from gateway.app import Gateway
    from gateway.context import RequestContext
    from gateway.protocols import chat

    body = entry.get("request")
    if not isinstance(body, dict):
        print(
            "--full needs the request body, which is logged only when the tenant's policy has "
            "log_content: true",
            file=sys.stderr,
        )
        return 2

    async def run() -> dict[str, Any]:
        gateway = Gateway(_quiet(config))
        await gateway.start()
        try:
            policy = gateway.policies.snapshot.policies[entry["tenant"]]
            replay_body = {**body, "stream": False}
            ctx = RequestContext.internal(policy, replay_body, f"replay-{entry['request_id']}", "replay")
            response = await gateway.handler_for(policy.tenant, "chat")(ctx)
            return {
                "status": response.status,
                "body": chat.encode_json(response.completion(), ctx.request),
                "decisions": [{"stage": d.stage, "action": d.action} for d in ctx.decisions],
            }
        finally:
            await gateway.stop()

    result = asyncio.run(run())
    print(json.dumps(result, indent=2))
    logged = entry.get("response")
    if isinstance(logged, dict):
        same = _answer(logged) == _answer(result["body"])
        print("answer: " + ("identical to the logged one" if same else "differs from the logged one"))
    return 0 if result["status"] == 200 else 1


def _quiet(config: GatewayConfig) -> GatewayConfig:
    """The config for an in-process gateway run by a command: its request log would mix with our output."""
    quiet = config.model_copy(deep=True)
    quiet.telemetry.request_log.enabled = False
    return quiet


def _answer(body: dict[str, Any]) -> list[Any]:
    return [c.get("message", {}).get("content") for c in body.get("choices", []) if isinstance(c, dict)]


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

    rebuild = sub.add_parser(
        "reindex", parents=[common], help="rebuild a tenant's index into a new collection and swap it in"
    )
    rebuild.add_argument("--tenant", required=True)
    rebuild.add_argument(
        "paths", nargs="*", metavar="PATH", help="re-ingest these files (default: re-embed the stored chunks)"
    )
    rebuild.set_defaults(func=cmd_reindex)

    evaluation = sub.add_parser("eval", help="measure retrieval and refusal").add_subparsers(
        dest="eval_command", required=True
    )
    retrieval = evaluation.add_parser("retrieval", parents=[common], help="score a golden set")
    retrieval.add_argument("--tenant", required=True)
    retrieval.add_argument("--golden", required=True, metavar="FILE", help="JSONL golden queries")
    retrieval.add_argument("--json", action="store_true", help="print one JSON object")
    retrieval.add_argument("--baseline", metavar="FILE", help="exit 1 when a metric is worse than this")
    retrieval.add_argument("--tolerance", type=float, default=0.02, help="allowed drop per metric (absolute)")
    retrieval.add_argument("--write-baseline", metavar="FILE", help="save these metrics as a baseline")
    retrieval.add_argument("--min-confidence", type=float, help="refusal threshold (default: the policy's)")
    retrieval.set_defaults(func=cmd_eval_retrieval)
    beir = evaluation.add_parser(
        "import-beir", parents=[common], help="ingest a BEIR dataset, write a golden file"
    )
    beir.add_argument("dir")
    beir.add_argument("--tenant", required=True)
    beir.add_argument("--golden-out", required=True, metavar="FILE")
    beir.add_argument("--split", default="test")
    beir.add_argument(
        "--unanswerable-fraction",
        type=float,
        default=0.2,
        help="share of queries whose relevant documents are left out of the corpus",
    )
    beir.add_argument("--seed", type=int, default=13)
    beir.set_defaults(func=cmd_eval_import_beir)
    pubmedqa = evaluation.add_parser(
        "import-pubmedqa",
        parents=[common],
        help="ingest half of PubMedQA's gold contexts, write a golden file",
    )
    pubmedqa.add_argument("file", help="ori_pqal.json or ori_pqal.json.gz")
    pubmedqa.add_argument("--tenant", required=True)
    pubmedqa.add_argument("--golden-out", required=True, metavar="FILE")
    pubmedqa.add_argument("--answerable-fraction", type=float, default=0.5)
    pubmedqa.add_argument("--seed", type=int, default=13)
    pubmedqa.set_defaults(func=cmd_eval_import_pubmedqa)
    answers = evaluation.add_parser(
        "answers",
        parents=[common],
        help="answer-level checks through the chain: citations, refusals, support",
    )
    answers.add_argument("--tenant", required=True)
    answers.add_argument("--golden", required=True, metavar="FILE")
    answers.add_argument("--model", default="local-extractive", help="public model that answers")
    answers.add_argument(
        "--judge", metavar="MODEL", help="public model judging whether answers are supported"
    )
    answers.set_defaults(func=cmd_eval_answers)
    calibrate = evaluation.add_parser("calibrate", parents=[common], help="choose min_confidence from data")
    calibrate.add_argument("--tenant", required=True)
    calibrate.add_argument("--golden", required=True, metavar="FILE")
    calibrate.add_argument("--target-refusal-precision", type=float, required=True, metavar="P")
    calibrate.add_argument("--dry-run", action="store_true", help="print the trade-off, change nothing")
    calibrate.set_defaults(func=cmd_eval_calibrate)

    replay = sub.add_parser("replay", parents=[common], help="re-run a logged request's retrieval")
    replay.add_argument("request_id")
    replay.add_argument("--log", metavar="FILE", help="request log (default: telemetry.request_log.path)")
    replay.add_argument("--full", action="store_true", help="also re-send the request through the chain")
    replay.set_defaults(func=cmd_replay)

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
    except (ConfigError, VectorStoreUnavailable) as exc:
        print(f"rag-gateway: {exc}", file=sys.stderr)
        return 2
