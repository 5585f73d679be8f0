"""What bench/scaleout.py reports: each window's figures, the summary against the targets,
the costs, the table.

Pure functions of snapshots and of the measured runs (dicts as ``scaleout.py``
builds them): no processes, no I/O. ``costs`` is the contract with ``scalechat
capacity``: per-unit costs, each naming the run it was taken from.
"""

from __future__ import annotations

import numpy as np

BATCHED = 0.9  # writes per delivery under this: the replica joined frames into fewer writes

def window(a, b, echo: list[float], lag: list[float], redis_idle: float = 0.0) -> dict:
    """Figures over one measured window from two ``components.Snap``; ``echo`` and ``lag``
    are the clients' whole lists of echo latencies and send lags (seconds)."""
    seconds = b.at - a.at

    def delta(key: str) -> int:
        return round(sum(y[key] - x[key] for x, y in zip(a.counters, b.counters)))

    delivered, published = delta("delivered"), delta("received")
    # What Redis handed out on pub/sub: with room-hash routing each room's channel has one
    # subscriber, so this counts every message Redis stored, a refused one included if it ran.
    redis_messages = delta("broker_received")
    replica_cpu = [y - x for x, y in zip(a.replica_cpu, b.replica_cpu)]
    redis_cpu = sum(b.redis_cpu) - sum(a.redis_cpu)
    nginx_cpu = b.nginx_cpu - a.nginx_cpu
    own_cpu = b.own_cpu - a.own_cpu
    echo = np.array(echo[a.echoes:b.echoes]) * 1000
    lag = np.array(lag[a.sends:b.sends]) * 1000
    (busy, steal), (busy_support, steal_support) = (
        tuple(y - x for x, y in zip(before, after)) for before, after in zip(a.cores, b.cores))
    writes = sum(b.replica_writes) - sum(a.replica_writes)
    return {
        "seconds": round(seconds, 3), "sent": b.sent - a.sent, "published": published,
        "redis_messages": redis_messages,
        "delivered": delivered, "client_messages": b.messages - a.messages,
        "refused_unavailable": delta("unavailable"), "rate_limited": delta("rate_limited"),
        "slow_consumer_disconnects": delta("slow_consumers"),
        "delivered_per_s": round(delivered / seconds, 1),
        "replica_cpu_s": [round(c, 3) for c in replica_cpu],
        "replica_cpu_percent": round(sum(replica_cpu) / seconds * 100, 1),
        "replica_cpu_us_per_delivery": round(sum(replica_cpu) / max(delivered, 1) * 1e6, 3),
        "replica_writes_per_delivery": round(writes / max(delivered, 1), 3),
        "redis_cpu_s": round(redis_cpu, 4),
        "redis_cpu_percent": round(redis_cpu / seconds * 100, 2),
        "redis_cpu_us_per_message": round(redis_cpu / max(redis_messages, 1) * 1e6, 2),
        "redis_idle_cpu_percent": round(redis_idle * 100, 3),
        "redis_net_cpu_us_per_message": round(
            (redis_cpu - redis_idle * seconds) / max(redis_messages, 1) * 1e6, 2),
        "redis_commands": [y - x for x, y in zip(a.redis_commands, b.redis_commands)],
        "nginx_cpu_s": round(nginx_cpu, 3),
        "nginx_cpu_us_per_delivery": round(nginx_cpu / max(delivered, 1) * 1e6, 3),
        "generator_cpu_percent": round(own_cpu / seconds * 100, 1),
        "generator_core_percent": round((own_cpu + redis_cpu + nginx_cpu) / seconds * 100, 1),
        # How late the generator sent: a late median means it could not offer the load (a
        # late p99 alone, that other processes took its core now and then).
        "generator_send_lag_p50_ms": round(float(np.percentile(lag, 50)), 2) if lag.size else None,
        "generator_send_lag_p99_ms": round(float(np.percentile(lag, 99)), 2) if lag.size else None,
        # Whatever ran on each core (this machine is shared); "others" is busy time
        # that none of the measured processes accounts for.
        "server_core_busy_percent": round(busy / seconds * 100, 1),
        "server_core_others_percent": round(max(0.0, busy - sum(replica_cpu)) / seconds * 100, 1),
        "server_core_steal_percent": round(steal / seconds * 100, 1),
        "support_core_busy_percent": round(busy_support / seconds * 100, 1),
        "support_core_others_percent": round(
            max(0.0, busy_support - own_cpu - redis_cpu - nginx_cpu) / seconds * 100, 1),
        "support_core_steal_percent": round(steal_support / seconds * 100, 1),
        "echo_p50_ms": round(float(np.percentile(echo, 50)), 2) if echo.size else None,
        "echo_p99_ms": round(float(np.percentile(echo, 99)), 2) if echo.size else None,
    }


TARGETS = {"replica_cpu_ratio_max": 1.5, "redis_cpu_us_per_message_max": 15.0,
           "saturation_ratio_min": 0.5, "refused_unavailable_max": 0}


def summarize(fixed: list[dict], saturation: list[dict], scaleout: list[dict],
              busy: dict | None = None) -> dict:
    by = {(r["scenario"], r["broker"]): r for r in fixed}
    ratios = {s: round(by[(s, "redis")]["replica_cpu_us_per_delivery"]
                       / by[(s, "memory")]["replica_cpu_us_per_delivery"], 3)
              for s, b in by if b == "redis" and (s, "memory") in by}
    redis_us = {r["scenario"]: r["redis_net_cpu_us_per_message"] for r in fixed
                if r["broker"] == "redis"}
    windows = [*fixed, *scaleout, *(step for r in saturation for step in r["steps"])]
    out: dict = {"targets": TARGETS, "replica_cpu_ratio_redis_vs_memory": ratios,
                 "redis_cpu_us_per_message": redis_us,
                 "exact": all(r["check"]["exact"] for r in [*fixed, *saturation, *scaleout]),
                 # Other processes' share of each core in the busiest measured window: noise.
                 "others_percent_max": {
                     core: max((w[f"{core}_core_others_percent"] for w in windows), default=0.0)
                     for core in ("server", "support")}}
    sat = {r["broker"]: r for r in saturation}
    if {"redis", "memory"} <= set(sat):
        out["saturation"] = {
            "scenario": sat["redis"]["scenario"],
            "redis_deliveries_per_s": sat["redis"]["saturation_deliveries_per_s"],
            "memory_deliveries_per_s": sat["memory"]["saturation_deliveries_per_s"],
            "ratio": round(sat["redis"]["saturation_deliveries_per_s"]
                           / sat["memory"]["saturation_deliveries_per_s"], 3),
            "limited_by": {b: r["limited_by"] for b, r in sat.items()},
            "per_replica_cpu_s_ratio": round(sat["redis"]["deliveries_per_replica_cpu_s"]
                                             / sat["memory"]["deliveries_per_replica_cpu_s"], 3),
            "refused_unavailable": sat["redis"]["refused_unavailable"],
            "refused_unavailable_sustained": sat["redis"]["refused_unavailable_sustained"]}
    if busy:
        out["busy_shard"] = {"messages_per_s": busy["messages_per_s"],
                             "redis_cpu_percent": busy["redis_cpu_percent"],
                             "redis_cpu_us_per_message": busy["redis_net_cpu_us_per_message"],
                             "redis_cpu_us_per_wake_up": busy["redis_cpu_us_per_wake_up"]}
    if len(scaleout) >= 2:  # 1 + 1 and 2 + 2 with room-hash routing first
        one, two = scaleout[:2]
        out["scaleout"] = {"deliveries_per_cpu_s": {one["config"]: one["deliveries_per_cpu_s"],
                                                    two["config"]: two["deliveries_per_cpu_s"]},
                           "ratio": round(two["deliveries_per_cpu_s"] / one["deliveries_per_cpu_s"], 3),
                           "sharded": two["sharded"]}
    met = {}
    if ratios:
        met["replica_cpu_ratio"] = max(ratios.values()) <= TARGETS["replica_cpu_ratio_max"]
    if "100x4" in redis_us:
        met["redis_cpu_us_per_message"] = redis_us["100x4"] <= TARGETS["redis_cpu_us_per_message_max"]
    if busy:
        met["redis_cpu_us_per_message_busy"] = (busy["redis_net_cpu_us_per_message"]
                                                <= TARGETS["redis_cpu_us_per_message_max"]
                                                and busy["refused_unavailable"] == 0)
    if "saturation" in out:
        s = out["saturation"]
        met["saturation"] = (s["ratio"] >= TARGETS["saturation_ratio_min"]
                             and s["refused_unavailable"] <= TARGETS["refused_unavailable_max"])
    out["met"] = met
    return out


def costs(fixed: list[dict], scaleout: list[dict], history_size: int,
          busy: dict | None = None) -> dict:
    """Per-unit costs for ``scalechat capacity``, each with the run it comes from."""
    redis = [r for r in fixed if r["broker"] == "redis"]
    out: dict = {
        "replica": [{"room_size": r["clients_per_room"], "scenario": r["scenario"],
                     "messages_per_room_per_s": r["messages_per_room_per_s"],
                     "cpu_us_per_delivery": r["replica_cpu_us_per_delivery"],
                     "writes_per_delivery": r["replica_writes_per_delivery"],
                     "batched": r["replica_writes_per_delivery"] < BATCHED} for r in redis],
        "history_size": history_size,
    }
    if redis:
        # Costs measured while messages were refused are those of a broker in trouble.
        out["refused_unavailable"] = sum(r["check"]["refused_unavailable"] for r in redis)
        out["exact"] = all(r["check"]["exact"] for r in redis)
        # The run with the most messages/s: a shard planned to be busy runs at such rates,
        # where fixed costs per call are shared (the other runs' figures stay in "fixed").
        busiest = max(redis, key=lambda r: r["redis_messages"] / r["seconds"])
        out["redis_cpu_us_per_message"] = {"value": busiest["redis_net_cpu_us_per_message"],
                                           "scenario": busiest["scenario"]}
    if busy and not busy["refused_unavailable"]:
        # A shard planned near capacity is busy: no sleep and wake-up between calls, and
        # calls that carry many messages (the busy-shard run measures exactly that).
        out["redis_cpu_us_per_message"] = {"value": busy["redis_net_cpu_us_per_message"],
                                           "scenario": f"busy shard, {busy['rooms']} rooms"}
        widest = max(redis, key=lambda r: r["rooms"] * r["clients_per_room"])
        out["replica_rss_bytes_per_connection"] = {
            "value": widest["replica_rss_bytes_per_connection"], "scenario": widest["scenario"]}
        out["replica_rss_bytes_idle"] = widest["replica_rss_bytes_idle"]
        untrimmed = [r for r in redis if r["redis_memory_bytes_per_accepted"] is not None
                     and r["check"]["accepted"] <= r["rooms"] * history_size]
        if untrimmed:
            most = max(untrimmed, key=lambda r: r["check"]["accepted"])
            out["redis_memory_bytes_per_stored_message"] = {
                "value": most["redis_memory_bytes_per_accepted"], "scenario": most["scenario"]}
    hashed = [r for r in scaleout if r.get("routing", "room-hash") == "room-hash"]
    if hashed:
        worst = max(hashed, key=lambda r: r["nginx_cpu_us_per_delivery"])
        out["nginx_cpu_us_per_delivery"] = {"value": worst["nginx_cpu_us_per_delivery"],
                                            "config": worst["config"]}
    return out


FIXED_HEAD = (f"{'scenario':9} {'broker':7} {'dlv/s':>8} {'replica us/dlv':>14} {'cpu %':>6} {'others':>6} "
              f"{'w/dlv':>6} {'redis us/msg':>12} {'p50/p99 ms':>13} {'refused':>7} {'exact':>5}")


def fixed_row(r: dict) -> str:
    redis = f"{r['redis_net_cpu_us_per_message']:.1f}" if r["broker"] == "redis" else "-"
    return (f"{r['scenario']:9} {r['broker']:7} {r['delivered_per_s']:>8,.0f} "
            f"{r['replica_cpu_us_per_delivery']:>14.2f} {r['replica_cpu_percent']:>6.1f} "
            f"{r['server_core_others_percent']:>6.1f} "
            f"{r['replica_writes_per_delivery']:>6.2f} {redis:>12} "
            f"{r['echo_p50_ms']:>6.1f}/{r['echo_p99_ms']:<6.1f} "
            f"{r['check']['refused_unavailable']:>7} {str(r['check']['exact']):>5}")


def report(result: dict) -> str:
    lines = []
    if result["fixed"]:
        lines += ["", "fixed load, one replica on its own core (others: % of that core used by other "
                  "processes; Redis CPU net of its idle rate):",
                  FIXED_HEAD, *map(fixed_row, result["fixed"])]
    for r in result["saturation"]:
        lines.append(f"saturation {r['scenario']} {r['broker']:6}: {r['saturation_deliveries_per_s']:,.0f} "
                     f"deliveries/s at {r['replica_cpu_percent_at_saturation']:.0f}% replica CPU "
                     f"(limited by {r['limited_by']}; {r['deliveries_per_replica_cpu_s']:,} per replica "
                     f"CPU-second), {r['refused_unavailable']} refused, exact {r['check']['exact']}")
    for r in result["scaleout"]:
        lines.append(f"scale-out {r['config']:22}: {r['delivered_per_s']:,.0f} deliveries/s "
                     f"({r['broker_messages_per_published']:.2f} broker messages per published), CPU s "
                     f"replicas {sum(r['replica_cpu_s']):.2f} redis {r['redis_cpu_s']:.2f} nginx "
                     f"{r['nginx_cpu_s']:.2f} -> {r['deliveries_per_cpu_s']:,} deliveries per CPU-second; "
                     f"keys per shard {r['keys_per_shard']}, sharded {r['sharded']}, "
                     f"exact {r['check']['exact']}")
    s = result["summary"]
    lines += ["", "summary (targets: replica CPU ratio <= 1.5x, Redis <= 15 us/message, "
              "saturation >= 0.5x with 0 refusals):"]
    for scenario, ratio in s["replica_cpu_ratio_redis_vs_memory"].items():
        lines.append(f"  replica CPU per delivery, Redis / memory broker, {scenario}: {ratio:.2f}x")
    for scenario, us in s["redis_cpu_us_per_message"].items():
        lines.append(f"  Redis CPU per published message, {scenario}: {us:.1f} us")
    if "busy_shard" in s:
        b = s["busy_shard"]
        lines.append(f"  Redis CPU per published message, busy shard ({b['messages_per_s']:,} messages/s, "
                     f"{b['redis_cpu_percent']:.0f}% of its core): {b['redis_cpu_us_per_message']:.1f} us; "
                     f"one wake-up of an idle Redis: {b['redis_cpu_us_per_wake_up']:.0f} us")
    if "saturation" in s:
        sat = s["saturation"]
        lines.append(f"  saturation {sat['scenario']}, Redis / memory replica: {sat['ratio']:.2f}x "
                     f"measured ({sat['per_replica_cpu_s_ratio']:.2f}x per replica CPU-second), "
                     f"{sat['refused_unavailable']} unavailable "
                     f"({sat['refused_unavailable_sustained']} in the steps it kept up with)")
    if "scaleout" in s:
        so = s["scaleout"]
        lines.append(f"  deliveries per CPU-second, 2 replicas + 2 shards / 1 + 1: {so['ratio']:.2f}x"
                     + ("" if so["sharded"] else " (the broker used one shard)"))
    lines.append(f"  every run exact: {s['exact']}; targets met: {s['met']}")
    noise = s["others_percent_max"]
    lines.append(f"  other processes took up to {noise['server']:.0f}% of the replicas' core and "
                 f"{noise['support']:.0f}% of the generator's in a measured window")
    return "\n".join(lines)


