"""``scalechat load``: flags or a LoadTest manifest in, a results directory and a verdict out.

``add_arguments(parser)`` declares the flags; ``run(args)`` validates them
(through the same schema as manifests: :mod:`scalechat.loadtest.schema`),
runs the shard, prints a summary with each stage's SLO verdict
(:mod:`scalechat.loadgen.summary`) and writes it to ``summary.json`` (and to
``--summary-json``). Every flag defaults to ``None`` here so that a
manifest's values stand unless a flag is given; the defaults shown in
``--help`` come from the schema.

With ``-f``, stage flags change every stage of the manifest: ``--duration S``
scales every stage's measurement window by one factor so that the longest
lasts S seconds; the others replace the field in every stage (one value) or
stage by stage (one value per stage).

Exit status: see :data:`EPILOG`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from scalechat.hostinfo import describe_server
from scalechat.loadgen.capacity import CapacitySearch, FixedStages
from scalechat.loadgen.config import load_manifest, read_manifest
from scalechat.loadgen.plan import RUN_ID_PATTERN, assign_workers, plan_stage
from scalechat.loadgen.summary import EXIT_SLO_FAILED, EXIT_SLO_UNSURE
from scalechat.loadtest.schema import API_VERSION, KIND, ConfigError, field_schema, validate
from scalechat.loadtest.slo import EXPRESSION_HELP, parse_expression
from scalechat.loadtest.spec import LoadTest, parse_spec

EXAMPLE = ("scalechat load --url 'ws://127.0.0.1:8080/ws/{room}' --clients-per-room 10,50,110 "
           "--rate 1 --duration 10")
USAGE = ("%(prog)s -f FILE [--duration S] [options]\n"
         "   or: %(prog)s --url URL --clients-per-room N[,N...] --rate R[,R...] --duration S[,S...] [options]")

EPILOG = f"""\
examples:
  # the seed experiment: one room, 10, 20, ... 110 clients, 1 msg/s each
  scalechat load --url 'ws://127.0.0.1:8080/ws/{{room}}' --clients-per-room 10,20,30,40,50,60,70,80,90,100,110 \\
      --rate 1 --size 150 --duration 30
  # the same from its manifest, every stage shortened to 5 s, failing CI if p99 > 50 ms
  scalechat load -f services/loadgen/examples/seed-experiment.yaml --duration 5 \\
      --slo 'p99<=50ms,delivery>=99.9%' --summary-json summary.json
  # 100 hot-and-cold rooms, Poisson arrivals, sizes 50..500 bytes
  scalechat load --url 'ws://127.0.0.1:8080/ws/{{room}}' --rooms 100 --clients-per-room 20 \\
      --room-distribution zipf:1.1 --arrival poisson --rate 0.5 --size uniform:50:500 --duration 60
  # find the highest per-client rate that keeps p99 <= 200 ms
  scalechat load --url 'ws://127.0.0.1:8080/ws/{{room}}' --clients-per-room 50 --rate 1 \\
      --find-capacity rate --step 1 --max-steps 20 --slo 'p99<=200ms'
  # a manifest, as two shards on two machines (same --run-id on both)
  scalechat load -f loadtest.yaml --shard 0/2 --run-id exp1 --out results/exp1
  scalechat load -f loadtest.yaml --shard 1/2 --run-id exp1 --out results/exp1

SLO: every stage is checked against the manifest's spec.slo, changed by --slo
(default p99 <= 500ms, delivery >= 99.9%): a stage passes when every threshold
holds, it measured deliveries and every client connected. The summary marks
each stage with a check or a cross, and stages where the generator fell more
than 100 ms behind its own timetable (its delay is then in the latencies).

Ctrl+C stops sending, drains, closes every socket with 1000 and writes the
results (run.json "interrupted": true); a second Ctrl+C skips the drain.

exit status:
  0    done, every stage met the SLO (with --find-capacity: the search ended)
  1    target unreachable, no connection succeeded, or results not stored
  2    bad input (one line naming the flag or the file and field)
  {EXIT_SLO_FAILED}    a stage missed the SLO
  {EXIT_SLO_UNSURE}    only stages where the generator fell behind missed the SLO: rerun with
       more --workers or shards before blaming the server
  130  interrupted (results are still complete)
"""

DESCRIPTION = """\
Open-loop WebSocket load against a scalechat server: stages of rooms x clients
x rate; latency from each message's scheduled send time to every receipt.

Several stages from flags: --rooms, --clients-per-room, --rate, --size and
--duration take comma-separated lists, one stage per value in order; lists
given together must have one length (or a single value).

With -f FILE the stages come from the manifest, and stage flags change them:
--duration S scales every stage's measurement so the longest lasts S seconds
(the summary says so); --rooms, --clients-per-room, --rate, --size, --warmup,
--room-distribution and --arrival replace the value in every stage (or stage
by stage, given one value per stage)."""

# stage flag dest -> spec key of a stage
STAGE_FLAGS = {"rooms": "rooms", "clients_per_room": "clientsPerRoom", "rate": "rate", "size": "size",
               "duration": "durationSeconds"}


def _default(dotted: str) -> Any:
    return field_schema(dotted).get("default")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.usage = USAGE
    parser.description = "\n\n".join(filter(None, [parser.description, DESCRIPTION]))
    src = parser.add_argument_group("what to run (flags, or a manifest)")
    src.add_argument("-f", "--file", metavar="FILE", help="LoadTest manifest (YAML), apiVersion "
                     f"{API_VERSION}, kind {KIND}; flags below override its target and run settings")
    src.add_argument("--url", help="WebSocket URL template with a {room} placeholder, "
                     "e.g. ws://127.0.0.1:8080/ws/{room} [required without -f]")
    src.add_argument("--rooms", metavar="N[,N...]", help=f"rooms per stage [default {_default('stages.rooms')}]")
    src.add_argument("--clients-per-room", metavar="N[,N...]",
                     help="clients per room (average under zipf) [required without -f]")
    src.add_argument("--rate", metavar="R[,R...]", help="messages per second per client [required without -f]")
    src.add_argument("--size", metavar="SIZE[,SIZE...]",
                     help="message text bytes: N, uniform:MIN:MAX or lognormal:MEDIAN:SIGMA "
                          f"[default {_default('stages.size')}]")
    src.add_argument("--duration", metavar="S[,S...]", help="measurement seconds per stage [required without "
                     "-f]; with -f, one value scales every stage so that the longest measures S seconds")
    src.add_argument("--warmup", metavar="S", help=f"seconds of sending before each measurement "
                     f"[default {_default('stages.warmupSeconds')}]")
    src.add_argument("--room-distribution", metavar="uniform|zipf[:EXP]",
                     help="how clients spread over rooms; zipf makes room k get a share ~ k^-EXP "
                          "[default uniform; zipf exponent 1.0]")
    src.add_argument("--arrival", choices=("constant", "poisson"), help="send times [default constant]")
    src.add_argument("--name", help="metadata.name recorded in run.json [default loadtest]")
    runs = parser.add_argument_group("how to run")
    runs.add_argument("--workers", metavar="N", help="worker processes; 0 = one per usable core "
                      "(rooms are never split across workers) [default 0]")
    runs.add_argument("--shard", metavar="I/N", help="run shard I of N (0-based); shards split the rooms, "
                      "balancing clients, and must share --run-id [default 0/spec.parallelism]")
    runs.add_argument("--run-id", metavar="ID", help="names the rooms (lt-ID-s<stage>-r<room>) and seeds "
                      "the timetables; required with N > 1 shards [default random]")
    runs.add_argument("--out", metavar="DIR", help="results directory [default results/<timestamp>]")
    runs.add_argument("--connect-rate", metavar="R", help="new connections per second per shard "
                      f"[default {_default('connectRate'):g}]")
    runs.add_argument("--drain", metavar="S", help="seconds to wait for in-flight deliveries after a stage; "
                      f"later ones count as late [default {_default('drainSeconds'):g}]")
    runs.add_argument("--events", choices=("none", "csv"), help="raw per-message event log, one CSV per worker "
                      "[default none]")
    runs.add_argument("--dry-run", action="store_true", help="validate, print the manifest and the room plan, exit")
    runs.add_argument("--results-redis", metavar="URL", help="also store this shard's results in Redis "
                      "(redis://host:6379/0), for shards that share no disk; needs --results-key")
    runs.add_argument("--results-key", metavar="KEY", help="the Redis hash holding the run's results")
    cap = parser.add_argument_group("capacity search and SLO")
    cap.add_argument("--find-capacity", choices=("clients", "rooms", "rate"),
                     help="grow this dimension of the (single) stage each step until the SLO breaks; "
                          "report the last step that held")
    cap.add_argument("--step", metavar="X", help="growth per step [default: the dimension's first value]")
    cap.add_argument("--max-steps", metavar="N", help="stages at most [default 10]")
    cap.add_argument("--slo", metavar="EXPR", help=f"thresholds every stage must meet, e.g. "
                     f"'p99<=50ms,delivery>=99.9%%': {EXPRESSION_HELP}; they replace the manifest's "
                     "(the others stand) [default p99<=500ms,delivery>=99.9%%]")
    cap.add_argument("--slo-p99", metavar="S", help="the same as --slo p99<=S (seconds)")
    cap.add_argument("--slo-delivery", metavar="RATIO", help="the same as --slo delivery>=RATIO")
    cap.add_argument("--summary-json", metavar="FILE", help="also write the end-of-run summary (stages, "
                     "verdicts) as JSON to FILE, or to stdout with '-' (the table then goes to stderr); "
                     "the results directory always gets summary.json")


# --------------------------------------------------------------------------- flags -> spec


def _number(raw: str, dotted: str, flag: str) -> int | float:
    schema = field_schema(dotted)
    integer = schema.get("type") == "integer" or "oneOf" in schema
    try:
        value: int | float = int(raw) if integer else float(raw)
    except ValueError:
        raise ConfigError(flag, f"must be {'an integer' if integer else 'a number'}, got {raw!r}") from None
    return validate(value, schema, flag)


def parse_size(raw: str, flag: str = "--size") -> int | dict[str, Any]:
    """``N``, ``uniform:MIN:MAX`` or ``lognormal:MEDIAN:SIGMA`` -> the manifest's size value."""
    kind, _, rest = raw.partition(":")
    parts = rest.split(":") if rest else []
    try:
        if not rest:
            return _number(raw, "stages.size", flag)
        if kind == "uniform" and len(parts) == 2:
            value: dict[str, Any] = {"distribution": "uniform", "min": int(parts[0]), "max": int(parts[1])}
        elif kind == "lognormal" and len(parts) == 2:
            value = {"distribution": "lognormal", "median": float(parts[0]), "sigma": float(parts[1])}
        else:
            raise ValueError
    except ValueError:
        raise ConfigError(flag, f"must be N, uniform:MIN:MAX or lognormal:MEDIAN:SIGMA, got {raw!r}") from None
    return value


def parse_room_distribution(raw: str) -> dict[str, Any]:
    kind, _, exponent = raw.partition(":")
    if kind == "uniform" and not exponent:
        return {"type": "uniform"}
    if kind == "zipf":
        return {"type": "zipf", "exponent": _number(exponent, "stages.roomDistribution.exponent",
                                                    "--room-distribution") if exponent else 1.0}
    raise ConfigError("--room-distribution", f"must be uniform, zipf or zipf:EXPONENT, got {raw!r}")


def missing_flags(args: argparse.Namespace) -> list[str]:
    """The flags a run without -f needs and did not get, in usage order."""
    needed = (("url", "--url"), ("clients_per_room", "--clients-per-room"), ("rate", "--rate"),
              ("duration", "--duration"))
    return [flag for dest, flag in needed if getattr(args, dest) is None]


def stage_values(args: argparse.Namespace) -> dict[str, list[Any]]:
    """Spec key -> the values of each stage flag given (validated)."""
    values: dict[str, list[Any]] = {}
    for dest, key in STAGE_FLAGS.items():
        raw = getattr(args, dest)
        if raw is None:
            continue
        flag = "--" + dest.replace("_", "-")
        items = [p.strip() for p in raw.split(",")]
        if dest == "size":
            values[key] = [parse_size(p, flag) for p in items]
        else:
            values[key] = [_number(p, f"stages.{key}", flag) for p in items]
    return values


def stages_from_flags(args: argparse.Namespace) -> list[dict[str, Any]]:
    values = stage_values(args)
    n = max(len(v) for v in values.values())
    flag_of = {k: "--" + d.replace("_", "-") for d, k in STAGE_FLAGS.items()}
    longest = next(k for k, v in values.items() if len(v) == n)
    for key, v in values.items():
        if len(v) not in (1, n):
            raise ConfigError(flag_of[key], f"has {len(v)} values but {flag_of[longest]} has {n}: "
                              "stage lists must have one length (or a single value)")
    varying = [k for k, v in values.items() if len(v) > 1]
    labels = {"clientsPerRoom": "clients", "durationSeconds": "duration"}
    stages = []
    for i in range(n):
        stage: dict[str, Any] = {k: v[i if len(v) > 1 else 0] for k, v in values.items()}
        if len(varying) == 1 and not isinstance(stage[varying[0]], dict):
            stage["name"] = f"{labels.get(varying[0], varying[0])}-{stage[varying[0]]:g}"
        if args.warmup is not None:
            stage["warmupSeconds"] = _number(args.warmup, "stages.warmupSeconds", "--warmup")
        if args.room_distribution is not None:
            stage["roomDistribution"] = parse_room_distribution(args.room_distribution)
        if args.arrival is not None:
            stage["arrival"] = args.arrival
        stages.append(stage)
    return stages


def apply_run_flags(spec: dict[str, Any], args: argparse.Namespace) -> None:
    """Flags that override a manifest's (or fill a flags-only) spec outside the stages."""
    if args.url is not None:
        spec["target"] = {"url": args.url}
    for dest, key in (("workers", "workers"), ("connect_rate", "connectRate"), ("drain", "drainSeconds")):
        if getattr(args, dest) is not None:
            spec[key] = _number(getattr(args, dest), key, "--" + dest.replace("_", "-"))
    if args.events is not None:
        spec["events"] = args.events
    slo = dict(spec.get("slo") or {})
    if args.slo is not None:
        try:
            slo.update(parse_expression(args.slo))
        except ValueError as exc:
            raise ConfigError("--slo", str(exc)) from None
    for dest, key in (("slo_p99", "p99Seconds"), ("slo_delivery", "deliveryRatio")):
        if getattr(args, dest) is not None:
            slo[key] = _number(getattr(args, dest), f"slo.{key}", "--" + dest.replace("_", "-"))
    if slo:
        spec["slo"] = slo
    if args.find_capacity is not None:
        search: dict[str, Any] = {"dimension": args.find_capacity}
        if args.step is not None:
            search["step"] = _number(args.step, "findCapacity.step", "--step")
        if args.max_steps is not None:
            search["maxSteps"] = _number(args.max_steps, "findCapacity.maxSteps", "--max-steps")
        spec["findCapacity"] = search
    elif args.step is not None or args.max_steps is not None:
        raise ConfigError("--step" if args.step is not None else "--max-steps", "needs --find-capacity")


FLAG_OF_PATH = {"spec.target.url": "--url", "spec.target": "--url", "spec.findCapacity": "--find-capacity"}


def override_stages(doc: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """Apply stage flags to a manifest's stages in place; the notes that say what changed.

    ``--duration S`` scales every stage's ``durationSeconds`` by one factor so the
    longest lasts S seconds; the other stage flags replace the field in every stage
    (one value) or stage by stage (as many values as stages).
    """
    spec = doc.get("spec") if isinstance(doc, dict) else None
    stages = spec.get("stages") if isinstance(spec, dict) else None
    if not isinstance(stages, list) or not all(isinstance(st, dict) for st in stages):
        return []  # the manifest's own error is reported by its validation
    notes = []
    values = stage_values(args)
    flag_of = {k: "--" + d.replace("_", "-") for d, k in STAGE_FLAGS.items()}
    if "durationSeconds" in values:
        if len(values["durationSeconds"]) != 1:
            raise ConfigError("--duration", "takes one value with -f: it scales every stage of the manifest")
        target = values.pop("durationSeconds")[0]
        durations = [st.get("durationSeconds") for st in stages]
        if all(isinstance(d, (int, float)) and not isinstance(d, bool) and d > 0 for d in durations):
            factor = target / max(durations)
            for st, d in zip(stages, durations):
                st["durationSeconds"] = d * factor
            before = f"{min(durations):g}-{max(durations):g}" if min(durations) != max(durations) else f"{max(durations):g}"
            after = (f"{min(durations) * factor:.3g}-{target:g}" if min(durations) != max(durations)
                     else f"{target:g}")
            notes.append(f"stage durations scaled x{factor:.3g} by --duration {target:g}: "
                         f"{before} s in {args.file}, {after} s measured here")
    extra = {"warmupSeconds": ("--warmup", args.warmup and [_number(args.warmup, "stages.warmupSeconds", "--warmup")]),
             "roomDistribution": ("--room-distribution",
                                  args.room_distribution and [parse_room_distribution(args.room_distribution)]),
             "arrival": ("--arrival", args.arrival and [args.arrival])}
    replaced = {key: (flag_of[key], v) for key, v in values.items()}
    replaced |= {key: (flag, v) for key, (flag, v) in extra.items() if v}
    for key, (flag, given) in replaced.items():
        if len(given) not in (1, len(stages)):
            raise ConfigError(flag, f"has {len(given)} values but {args.file} has {len(stages)} stages: "
                              "give one value (every stage) or one per stage")
        for i, st in enumerate(stages):
            st[key] = given[i if len(given) > 1 else 0]
        shown = ",".join(str(_show(v)) for v in given)
        notes.append(f"{flag} {shown} replaced spec.stages[*].{key} of {args.file}")
    return notes


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return ":".join(str(v) for v in value.values())
    return f"{value:g}" if isinstance(value, float) else str(value)


def build_test(args: argparse.Namespace) -> tuple[LoadTest, list[str]]:
    """The validated LoadTest from ``-f`` and/or flags, and notes on what flags changed in a manifest.

    ConfigError names the flag or field; without -f, every missing required flag at once.
    """
    if args.file is not None:
        doc = read_manifest(args.file)
        notes = override_stages(doc, args)
        if isinstance(doc, dict) and isinstance(doc.get("spec"), dict):
            apply_run_flags(doc["spec"], args)
            if args.name is not None:
                doc["metadata"] = {**(doc.get("metadata") or {}), "name": args.name}
        return load_manifest(args.file, doc), notes
    missing = missing_flags(args)
    if missing:
        raise ConfigError(", ".join(missing), f"{'is' if len(missing) == 1 else 'are'} required without a "
                          f"manifest (-f FILE); for example:\n  {EXAMPLE}")
    spec: dict[str, Any] = {"stages": stages_from_flags(args)}
    apply_run_flags(spec, args)
    try:
        return parse_spec(spec, "spec", {"name": args.name or "loadtest"}), []
    except ConfigError as exc:
        raise ConfigError(FLAG_OF_PATH.get(exc.path, exc.path), exc.problem) from None


def parse_shard(raw: str | None, parallelism: int) -> tuple[int, int]:
    if raw is None:
        if parallelism > 1:
            raise ConfigError("--shard", f"spec.parallelism is {parallelism}: run each shard with "
                              f"--shard I/{parallelism} and the same --run-id")
        return 0, 1
    i, sep, n = raw.partition("/")
    if not sep or not i.isdigit() or not n.isdigit() or not 0 <= int(i) < int(n):
        raise ConfigError("--shard", f"must be I/N with 0 <= I < N, got {raw!r}")
    return int(i), int(n)


def check_reachable(url: str, timeout: float = 3.0) -> str | None:
    """None if a TCP connection to the URL's host and port opens, else the reason."""
    parts = urlsplit(url.replace("{room}", "x"))
    try:
        with socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or str(exc)


# --------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    prog = "scalechat load"
    try:
        test, notes = build_test(args)
        shard, shards = parse_shard(args.shard, test.parallelism)
        if test.find_capacity is not None and shards != 1:
            raise ConfigError("--find-capacity", "needs a single shard: shards cannot agree on when to stop")
        if args.run_id is not None and not RUN_ID_PATTERN.fullmatch(args.run_id):
            raise ConfigError("--run-id", f"must be 1-24 letters, digits, - or _, got {args.run_id!r}")
        if (args.results_redis is None) != (args.results_key is None) or args.results_key == "":
            flag = "--results-key" if args.results_redis is not None else "--results-redis"
            raise ConfigError(flag, "is required with " + ("--results-redis" if flag == "--results-key"
                                                           else "--results-key"))
        if shards > 1 and args.run_id is None:
            raise ConfigError("--run-id", "is required with more than one shard: every shard must use the same one")
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    run_id = args.run_id or secrets.token_hex(4)
    workers = _worker_count(test, shard, shards, run_id)
    if args.dry_run:
        _print_plan(test, shard, shards, run_id, workers)
        return 0
    reason = check_reachable(test.url)
    if reason is not None:
        print(f"{prog}: cannot reach {test.url}: {reason}", file=sys.stderr)
        return 1
    from scalechat.loadgen.runner import Runner
    from scalechat.loadgen import summary as summaries
    from scalechat.results import write_json_atomic

    out = Path(args.out or Path("results") / time.strftime("%Y%m%d-%H%M%S"))
    if test.find_capacity is not None:
        fc = test.find_capacity
        source: Any = CapacitySearch(test.stages[0], fc.dimension, fc.step, fc.max_steps, test.slo)
    else:
        source = FixedStages(test.stages)
    redis = (args.results_redis, args.results_key) if args.results_redis else None
    runner = Runner(test, source, shard=shard, shards=shards, workers=workers, run_id=run_id, out_dir=out,
                    argv=sys.argv, redis=redis)
    for note in notes:
        runner.progress.message(f"note: {note}")
    try:
        report = runner.run()
    except OSError as exc:  # the final results could not be stored
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    summary = summaries.build(report.stages, report.planned, test.slo.to_spec(), run_id=run_id, name=test.name,
                              url=test.url, out_dir=str(out), shard=(shard, shards),
                              interrupted=report.interrupted, notes=notes, capacity=report.capacity)
    code = summaries.exit_code(summary)
    if report.interrupted:
        code = 130
    elif report.stages and not any(s.connections for s in report.stages):
        code = 1
    summary["exit_code"] = code
    summary["server"] = describe_server(runner.server_info)
    human = sys.stderr if args.summary_json == "-" else sys.stdout
    print(summaries.render(summary, human), file=human)
    if report.capacity is not None:
        cap = report.capacity
        bound = "" if cap["bounded"] else " (no step failed: a lower bound)"
        print(f"capacity: {cap['dimension']} = {cap['value']:g} (stage {cap['stage']}){bound}" if cap["value"] is not None
              else f"capacity: none: the first step already broke the SLO ({cap['steps'][0]['reason']})", file=human)
    print(f"results: {out} (run id {run_id}, shard {shard}/{shards})", file=human)
    try:
        write_json_atomic(out / "summary.json", summary)
        if args.summary_json == "-":
            sys.stdout.write(json.dumps(summary, indent=2) + "\n")
            sys.stdout.flush()
        elif args.summary_json is not None:
            write_json_atomic(Path(args.summary_json), summary)
    except OSError as exc:
        print(f"{prog}: cannot write the summary: {exc}", file=sys.stderr)
        return 1
    if code == 1:
        print(f"{prog}: no connection succeeded: {dict(report.stages[0].errors)}", file=sys.stderr)
    return code


def _worker_count(test: LoadTest, shard: int, shards: int, run_id: str) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    wanted = test.workers or cores
    if test.find_capacity is not None:
        return wanted
    rooms = max(len(plan_stage(run_id, i, s, shards).for_shard(shard)) for i, s in enumerate(test.stages))
    return max(1, min(wanted, rooms))


def _print_plan(test: LoadTest, shard: int, shards: int, run_id: str, workers: int) -> None:
    manifest = {"apiVersion": API_VERSION, "kind": KIND, "metadata": dict(test.metadata), "spec": test.to_spec()}
    print(yaml.safe_dump(manifest, sort_keys=False), end="")
    print(f"# plan: run id {run_id}, shard {shard}/{shards}, {workers} worker(s)")
    for i, stage in enumerate(test.stages):
        plan = plan_stage(run_id, i, stage, shards)
        mine = plan.for_shard(shard)
        per_worker = assign_workers(mine, workers)
        print(f"# stage {i} {stage.name}: " + ", ".join(f"{r.name}={r.clients}" for r in mine[:20])
              + (f", ... ({len(mine)} rooms)" if len(mine) > 20 else ""))
        print(f"#   clients per worker: {[sum(r.clients for r in rooms) for rooms in per_worker]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scalechat load")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
