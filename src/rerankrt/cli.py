"""`rerankrt export | serve | rerank`: the command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import types
from pathlib import Path
from typing import Literal, Union, get_args, get_origin

from pydantic import ValidationError
from pydantic_settings import BaseSettings

from rerankrt import __version__
from rerankrt.errors import RerankrtError
from rerankrt.families import canonical_family_name, family_names
from rerankrt.logs import configure_logging
from rerankrt.precision import ENGINE_PRECISIONS, INT8_METHODS, INT8_SEARCH_BUDGET_S, PRECISIONS, Precision
from rerankrt.runtime.plan import BACKEND_CHOICES

log = logging.getLogger("rerankrt")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except RerankrtError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rerankrt", description="Compile reranker models and serve them fast.")
    parser.add_argument("--version", action="version", version=f"rerankrt {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    export = commands.add_parser("export", help="export a model to a verified ONNX artifact folder")
    export.add_argument("model", metavar="MODEL", help="Hugging Face Hub id or local model folder")
    export.add_argument("--out", type=Path, help="artifact folder (default: engines/<model name>)")
    export.add_argument(
        "--max-length", type=int, help="tokens per pair (default: the family's, 512 for cross-encoders)"
    )
    export.add_argument("--opset", type=int, help="ONNX opset (default: optimum's for the architecture)")
    export.add_argument("--revision", help="Hub revision (branch, tag or commit) when MODEL is a Hub id")
    export.add_argument(
        "--family",
        type=canonical_family_name,  # an old name (decoder-yes-no) is taken as the current one
        choices=family_names(),
        help="the reranker family, for a checkpoint no family recognises by itself (a fine-tune under another name); "
        "decoder-yes-no, the old name of qwen3-yes-no, is taken too",
    )
    export.add_argument(
        "--chat-template", type=Path, help="Jinja prompt template (prompt-based rerankers such as Qwen3)"
    )
    export.add_argument(
        "--family-option",
        type=option_pair,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an export option of the family, recorded in the artifact (repeatable); e.g. cutoff_layer=28 picks the "
        "scoring layer of a layerwise reranker (docs/export.md)",
    )
    export.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISIONS,
        help="what the artifact serves: fp32 (default), int8 (CPU), bf16 (torch on CPU; GPU engines), fp16 (GPU); "
        "a variant is checked against fp32 and refused below the README's fidelity thresholds",
    )
    export.add_argument(
        "--accept-fidelity-loss", action="store_true", help="export a --precision variant even if it misses them"
    )
    export.add_argument(
        "--int8-method",
        choices=INT8_METHODS,
        help="with --precision int8: try this recipe only (default: dynamic, blockwise, mixed, search in turn until "
        "one passes the fidelity gate; search: the model's own products kept fp32; docs/precision.md)",
    )
    export.add_argument(
        "--int8-search-budget",
        type=budget_seconds,
        default=INT8_SEARCH_BUDGET_S,
        metavar="SECONDS",
        help=f"time budget of the int8 search (default {INT8_SEARCH_BUDGET_S:.0f}); when spent it stops and says so",
    )
    export.add_argument("--force", action="store_true", help="replace OUT if it already exists")
    export.add_argument("--tensorrt", action="store_true", help="also build a TensorRT engine (GPU, `gpu` extra)")
    export.add_argument(
        "--tune",
        action="store_true",
        help="then time every plan that passes the self-check on this machine and record the fastest, as the first "
        "`rerankrt serve` here would (the timings stay outside the artifact: $RERANKRT_CACHE_DIR)",
    )
    add_engine_arguments(export, "--engine-precision")
    export.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    export.set_defaults(run=run_export)

    build = commands.add_parser("build-engine", help="build a TensorRT engine for this GPU into an artifact folder")
    build.add_argument("artifact", type=Path, metavar="ARTIFACT_DIR")
    add_engine_arguments(build)
    build.add_argument(
        "--if-missing",
        action="store_true",
        help="only when the artifact has no engine for this GPU and TensorRT version, or it does not load (an init "
        "step before serving: deploy/kubernetes/)",
    )
    build.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    build.set_defaults(run=run_build_engine)

    info = commands.add_parser("info", help="print the environment (CPU features, providers, GPU) and an artifact")
    info.add_argument("artifact", type=Path, nargs="?", metavar="ARTIFACT_DIR")
    info.set_defaults(run=run_info)

    from rerankrt.server.settings import ServeSettings

    serve = commands.add_parser(
        "serve",
        help="serve a model over HTTP (/v1/rerank)",
        description="Every flag can also be set as an environment variable RERANKRT_<FLAG> (e.g. RERANKRT_PORT).",
    )
    add_settings_arguments(serve, ServeSettings)
    serve.set_defaults(run=run_serve, settings_class=ServeSettings)

    rerank = commands.add_parser("rerank", help="score documents against a query once and print JSON")
    rerank.add_argument("--model-path", required=True, help="artifact folder, model folder or Hub id")
    rerank.add_argument("--backend", default="auto", choices=BACKEND_CHOICES)
    rerank.add_argument("--precision", choices=PRECISIONS, help="fp32, or the artifact's variant (its default)")
    rerank.add_argument("--query", required=True)
    rerank.add_argument("documents", nargs="+", metavar="DOCUMENT")
    rerank.add_argument("--instruct", help="task instruction (instruction-following rerankers only)")
    rerank.add_argument("--chat-template", type=Path, help="Jinja prompt template (prompt-based rerankers)")
    rerank.add_argument("--raw-scores", action="store_true", help="print logits instead of sigmoid scores")
    rerank.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    rerank.set_defaults(run=run_rerank)
    return parser


def budget_seconds(text: str) -> float:
    """argparse type of --int8-search-budget: a clear error for anything but seconds > 0."""
    from rerankrt.precision import int8_search_budget

    try:
        return int8_search_budget(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_engine_arguments(parser: argparse.ArgumentParser, precision_flag: str = "--precision") -> None:
    parser.add_argument(
        precision_flag,
        dest="engine_precision",
        default="fp16",
        choices=[p.value for p in ENGINE_PRECISIONS],
        help="engine precision (default fp16)",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        help="largest batch the engine takes (default: as many max-length sequences as fit half the GPU's memory "
        "with attention unfused, at most 64; the build logs the estimate)",
    )
    parser.add_argument("--engine-max-length", type=int, help="longest sequence (default: the artifact's max_length)")
    parser.add_argument("--opt-batch", type=int, help="batch size TensorRT tunes for (default min(max, 16))")
    parser.add_argument("--opt-length", type=int, help="sequence length TensorRT tunes for (default min(max, 256))")


def engine_options(args: argparse.Namespace) -> dict:
    return {
        "precision": args.engine_precision,
        "max_batch": args.max_batch,
        "max_length": args.engine_max_length,
        "opt_batch": args.opt_batch,
        "opt_length": args.opt_length,
    }


def run_info(args: argparse.Namespace) -> int:
    from rerankrt.info import collect

    print(json.dumps(collect(args.artifact), indent=2))
    return 0


def run_build_engine(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    from rerankrt.export.tensorrt import build_engine, ensure_engine

    if args.if_missing:
        ensure_engine(args.artifact, args.engine_precision, required=True)
    else:
        build_engine(args.artifact, **engine_options(args))
    return 0


def option_pair(text: str) -> tuple[str, str]:
    """NAME=VALUE, for --family-option."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE")
    return name.strip(), value.strip()


def family_options(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """--family-option pairs as a dict; a name given twice is an error."""
    options: dict[str, str] = {}
    for name, value in pairs:
        if name in options:
            raise SystemExit(f"--family-option {name}: given twice")
        options[name] = value
    return options


def run_export(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    from rerankrt.export import export_model

    out = args.out or Path("engines") / Path(args.model.rstrip("/")).name
    export_model(
        args.model,
        out,
        max_length=args.max_length,
        opset=args.opset,
        revision=args.revision,
        family=args.family,
        chat_template=args.chat_template,
        family_options=family_options(args.family_option),
        force=args.force,
        precision=args.precision,
        accept_fidelity_loss=args.accept_fidelity_loss,
        int8_method=args.int8_method,
        int8_search_budget_s=args.int8_search_budget,
    )
    if args.tensorrt:
        from rerankrt.export.tensorrt import build_engine

        build_engine(out, **engine_options(args))
    if args.tune:
        from rerankrt.runtime import Reranker

        with Reranker.load(str(out), tune=True) as reranker:
            timings = reranker.model.timings
        print(f"plan timings for this machine: {timings.summary() if timings else 'not measured'}")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, args.settings_class)
    configure_logging(settings.log_level, settings.log_format)
    if settings.ray:
        from rerankrt.server.ray_serve import serve_on_ray  # the one module that imports ray

        return serve_on_ray(settings)
    from rerankrt.artifact import is_artifact
    from rerankrt.server import create_app
    from rerankrt.server.http import serve

    if settings.build_engine and settings.backend in ("auto", "tensorrt") and is_artifact(Path(settings.model_path)):
        from rerankrt.export.tensorrt import ensure_engine

        ensure_engine(Path(settings.model_path), required=settings.backend == "tensorrt")
    app = create_app(settings)
    log.info("serving %s on http://%s:%d", app.state.reranker.name, settings.host, settings.port)
    serve(app, settings)  # uvicorn within the settings' connection limits
    return 0


def run_rerank(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    from rerankrt.runtime import Reranker

    options = {"backend": args.backend, "precision": args.precision, "chat_template": args.chat_template}
    with Reranker.load(args.model_path, **{k: v for k, v in options.items() if v is not None}) as reranker:
        ranked = reranker.rerank(args.query, args.documents, raw_scores=args.raw_scores, instruct=args.instruct)
    results = [{"index": r.index, "score": r.score, "document": args.documents[r.index]} for r in ranked]
    print(json.dumps(results, ensure_ascii=False, indent=2))
    return 0


# --- settings <-> flags ------------------------------------------------------------------------


def add_settings_arguments(parser: argparse.ArgumentParser, settings_class: type[BaseSettings]) -> None:
    """One --flag per settings field, its help text taken from the field's description."""
    prefix = settings_class.model_config.get("env_prefix", "")
    for name, field in settings_class.model_fields.items():
        annotation = _unwrap_optional(field.annotation)
        default = field.get_default(call_default_factory=True)
        default = default.value if isinstance(default, Precision) else default
        notes = ["required"] if field.is_required() else [] if default is None else [f"default: {default}"]
        notes.append(f"env {prefix}{name.upper()}")
        kwargs: dict = {"dest": name, "default": None, "help": f"{field.description} ({'; '.join(notes)})"}
        if get_origin(annotation) is Literal:
            kwargs["choices"] = list(get_args(annotation))
        elif isinstance(annotation, type) and issubclass(annotation, Precision):
            kwargs["choices"] = list(PRECISIONS)
        elif annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif annotation in (int, float):
            kwargs["type"] = annotation
        parser.add_argument("--" + name.replace("_", "-"), **kwargs)


def settings_from_args(args: argparse.Namespace, settings_class: type[BaseSettings]):
    """Flags given on the command line win over environment variables, which win over defaults."""
    given = {
        name: value for name, value in vars(args).items() if name in settings_class.model_fields and value is not None
    }
    try:
        return settings_class(**given)
    except ValidationError as exc:
        prefix = settings_class.model_config.get("env_prefix", "")
        problems = []
        for err in exc.errors():
            if not err["loc"]:  # a check across fields names them in its message
                problems.append(err["msg"].removeprefix("Value error, "))
                continue
            name = str(err["loc"][0])
            problems.append(f"--{name.replace('_', '-')} (env {prefix}{name.upper()}): {err['msg']}")
        raise RerankrtError("; ".join(problems)) from exc


def _unwrap_optional(annotation):
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


if __name__ == "__main__":
    sys.exit(main())
