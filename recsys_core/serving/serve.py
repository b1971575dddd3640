"""Serve recommendations over HTTP (FastAPI + uvicorn) from an ONNX model directory or a registry alias, with hot reload.

Examples:
  recsys serve --model-dir .recsys/artifacts/onnx_model/<fingerprint>/fp32 --port 8000
  recsys serve --registry-alias champion --reload-interval 10
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from recsys_core.events import EventMapping, EventRules, open_store
from recsys_core.experiments.definitions import ExperimentStore
from recsys_core.paths import recsys_home
from recsys_core.serving.app import Limits, create_app
from recsys_core.serving.arms import ExperimentArms, registry_sources
from recsys_core.serving.auth import ApiKeys
from recsys_core.serving.events_api import LiveEvents
from recsys_core.serving.exposure_log import ExposureLog
from recsys_core.serving.middleware import access_log
from recsys_core.serving.reload import DirectorySource, ModelHolder, ModelSource, RegistrySource, Reloader, load_validated
from recsys_core.tracking import MlflowSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-dir", help="an exported ONNX serving directory (watched for replacement)")
    source.add_argument("--registry-alias", help="serve models:/<name>@<alias> from the MLflow registry, e.g. champion")
    defaults = MlflowSettings()
    parser.add_argument("--registered-model-name", default=defaults.registered_model_name)
    parser.add_argument("--tracking-uri", default="", help="MLflow store; default sqlite under $RECSYS_HOME")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 = a free port chosen by the OS (see --port-file)")
    parser.add_argument("--port-file", default="", help="written with the port once the socket listens: how a parent "
                        "that started the service with --port 0 learns its port without racing other processes for it")
    parser.add_argument("--reload-interval", type=float, default=10.0, help="seconds between source polls; 0 = off")
    parser.add_argument("--providers", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1,
                        help="ONNX Runtime intra-op threads per request; 1 suits concurrent requests, 0 = all cores")
    parser.add_argument("--max-k", type=int, default=Limits.max_k)
    parser.add_argument("--max-history", type=int, default=Limits.max_history)
    parser.add_argument("--max-body-bytes", type=int, default=Limits.max_body_bytes, help="413 beyond")
    parser.add_argument("--max-json-depth", type=int, default=Limits.max_json_depth, help="400 beyond")
    parser.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                        help="one JSON line per request on stderr, with its request id")
    parser.add_argument("--event-store", default="", help="sqlite:///PATH or redis://HOST:PORT/DB; default "
                        "$RECSYS_EVENT_STORE, else SQLite at $RECSYS_HOME/events.sqlite; 'off' disables POST /events")
    parser.add_argument("--api-keys", default="", help="JSON file of API key hashes and scopes; default $RECSYS_API_KEYS_FILE")
    parser.add_argument("--max-batch", type=int, default=EventRules.max_batch, help="events per POST /events")
    parser.add_argument("--experiments-db", default="", help="online experiment definitions (SQLite, shared with "
                        "`recsys experiments`); default $RECSYS_HOME/experiments.sqlite; 'off' serves the champion only")
    parser.add_argument("--exposure-queue", type=int, default=10_000, help="responses queued for the exposure log; "
                        "beyond, exposures are dropped and counted, never waited for")
    parser.add_argument("--log-level", default="warning")


def limits_from_args(args: argparse.Namespace) -> Limits:
    return Limits(max_k=args.max_k, max_history=args.max_history, max_body_bytes=args.max_body_bytes,
                  max_json_depth=args.max_json_depth)  # fmt: skip


def configure_access_log(enabled: bool) -> None:
    """The access log goes to stderr at INFO whatever --log-level says; off, its lines are not even formatted."""
    access_log.handlers.clear()
    access_log.propagate = False
    access_log.setLevel(logging.INFO if enabled else logging.WARNING)
    if enabled:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access_log.addHandler(handler)


def source_from_args(args: argparse.Namespace) -> ModelSource:
    if args.model_dir:
        return DirectorySource(args.model_dir)
    return RegistrySource(settings_from_args(args), args.registry_alias, recsys_home() / "cache" / "served_models")


def settings_from_args(args: argparse.Namespace) -> MlflowSettings:
    return MlflowSettings(tracking_uri=args.tracking_uri, registered_model_name=args.registered_model_name)


def open_live_events(url: str, max_batch: int, history_len: int) -> LiveEvents | None:
    """The event store the service writes to; its per-user cap covers the served model's history."""
    if url == "off":
        return None
    mapping = EventMapping()
    store = open_store(url, history_cap=max(200, history_len), history_types=mapping.rated_types)
    return LiveEvents(store, EventRules(max_batch=max_batch), mapping)


def build_service(
    source: ModelSource, reload_interval: float = 10.0, providers: str = "auto", limits: Limits = Limits(), threads: int = 1,
    event_store: str = "", api_keys: str = "", max_batch: int = EventRules.max_batch, experiments_db: str = "",
    settings: MlflowSettings | None = None, exposure_queue: int = 10_000,
) -> FastAPI:  # fmt: skip
    """Loads and validates the first model (fails loudly when it cannot serve), then wires the reloader, events and
    experiments (which need the event store for their exposures; arms resolve in `settings`' registry)."""
    holder = ModelHolder(load_validated(source, source.current_token(), providers, threads))
    reloader = Reloader(holder, source, reload_interval, providers, threads)
    live = open_live_events(event_store, max_batch, holder.current.scorer.history_len)
    experiments = None
    if live is not None and experiments_db != "off":
        sources = registry_sources(settings or MlflowSettings(), recsys_home() / "cache" / "served_models")
        experiments = ExperimentArms(holder, ExperimentStore(experiments_db or None), sources,
                                     ExposureLog(live.store, max_queue=exposure_queue), interval_s=reload_interval,
                                     providers=providers, threads=threads)  # fmt: skip
    return create_app(holder, reloader, limits, live, ApiKeys.from_env(api_keys), experiments=experiments)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    configure_access_log(args.access_log)
    source = source_from_args(args)
    try:
        app = build_service(
            source, args.reload_interval, args.providers, limits_from_args(args), args.threads,
            args.event_store, args.api_keys, args.max_batch, args.experiments_db, settings_from_args(args), args.exposure_queue,
        )
    except Exception as error:  # nothing to serve: say what and where, no traceback
        print(f"recsys serve: cannot serve {source.describe()}: {error}", file=sys.stderr)
        return 2
    try:
        sock = listen(args.host, args.port, Path(args.port_file) if args.port_file else None)
    except OSError as error:  # e.g. the port is taken: say which, no traceback
        print(f"recsys serve: cannot listen on {args.host}:{args.port}: {error.strerror or error}", file=sys.stderr)
        return 2
    uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, access_log=False)).run(sockets=[sock])
    return 0


def listen(host: str, port: int, port_file: Path | None) -> socket.socket:
    """Binds before uvicorn starts, so the port written to `port_file` is already ours (connections wait in the
    backlog until the server accepts them); written to a temporary name first, so a reader never sees half of it."""
    sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    if port_file is not None:
        partial = port_file.with_name(port_file.name + ".partial")
        partial.write_text(str(sock.getsockname()[1]))
        partial.replace(port_file)
    return sock


if __name__ == "__main__":  # `python -m recsys_core.serving.serve ...`: the service without the full CLI's imports
    cli = argparse.ArgumentParser(prog="recsys serve", description=__doc__)
    add_arguments(cli)
    sys.exit(run(cli.parse_args()))
