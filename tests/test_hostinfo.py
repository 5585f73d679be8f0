"""describe_server: the line a load-test result names its server's limits in."""

from scalechat.hostinfo import describe_server


def test_the_quota_and_limit_come_first_when_the_server_has_them():
    info = {"node": "pod-a", "host": {"cgroup_cpu_quota": 0.5, "cgroup_memory_limit_bytes": 512 << 20,
                                      "cpu_model": "AMD EPYC", "cpu_usable": 2}}
    assert describe_server(info) == "server pod-a: CPU quota 0.5, memory limit 512 MiB; AMD EPYC"


def test_no_quota_says_how_many_cpus_the_server_could_use():
    info = {"node": "vm:8080", "host": {"cgroup_cpu_quota": None, "cpu_usable": 2, "cpu_model": "x"}}
    assert describe_server(info) == "server vm:8080: no CPU quota (2 CPUs usable), no memory limit; x"


def test_an_unreadable_info_is_said_not_hidden():
    assert "not known" in describe_server(None)
