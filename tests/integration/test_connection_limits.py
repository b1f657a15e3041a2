"""Connection limits of the Kafka front (issue 13 item 8) against a real broker.

``kafka.max_connections`` and ``kafka.max_connections_per_ip`` refuse connections beyond them
(closed before anything is read); ``sasl.authentication_timeout_ms`` closes connections that
do not log in; ``kafka.connections_max_idle_ms`` closes connections that send no whole request
(half a frame does not count), while a busy connection stays. Clients connect from several
loopback addresses (127.0.0.x) to count as different hosts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kio.schema.api_versions.v3.request import ApiVersionsRequest
from kio.schema.metadata.v12.request import MetadataRequest
from kio.schema.sasl_authenticate.v2.request import SaslAuthenticateRequest
from kio.schema.sasl_handshake.v1.request import SaslHandshakeRequest

from tests.support.broker import BrokerProcess
from tests.support.wire import Wire

pytestmark = [pytest.mark.streamd_only]

IDLE_MS = 4000
AUTH_TIMEOUT_MS = 1500


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    base: Path = tmp_path_factory.mktemp("limited-broker")
    broker = BrokerProcess(base / "data", log_path=base / "broker.log")
    broker.settings.update(
        {
            "kafka.listeners": f"SASL://127.0.0.1:{broker.kafka_port}",
            "kafka.listener_security_protocols": "SASL:SASL_PLAINTEXT",
            "sasl.mechanisms": "PLAIN",
            "security.bootstrap_users": "alice:alice-pw:SCRAM-SHA-256",
            "kafka.max_connections": "4",
            "kafka.max_connections_per_ip": "2",
            "sasl.authentication_timeout_ms": str(AUTH_TIMEOUT_MS),
            "kafka.connections_max_idle_ms": str(IDLE_MS),
        }
    )
    broker.start()
    yield broker
    broker.close()


def login(w: Wire) -> None:
    assert w.call(SaslHandshakeRequest(mechanism="PLAIN")).error_code == 0
    assert w.call(SaslAuthenticateRequest(auth_bytes=b"\0alice\0alice-pw")).error_code == 0


def metadata(w: Wire) -> object:
    return w.call(
        MetadataRequest(
            topics=None, allow_auto_topic_creation=False, include_topic_authorized_operations=False
        )
    )


def connected(broker: BrokerProcess, source: str) -> Wire:
    w = Wire(broker.address, source=source)
    login(w)
    return w


def test_connection_limits(limited: BrokerProcess) -> None:
    open_ = [connected(limited, "127.0.0.1"), connected(limited, "127.0.0.1")]
    try:
        with Wire(limited.address, source="127.0.0.1") as third:
            assert third.closed_by_peer(), "a third connection from one address"
        open_ += [connected(limited, "127.0.0.2"), connected(limited, "127.0.0.2")]
        with Wire(limited.address, source="127.0.0.3") as fifth:
            assert fifth.closed_by_peer(), "a fifth connection to the broker"
        for w in open_:
            assert metadata(w) is not None  # the admitted ones are unaffected
        open_.pop(0).close()
        deadline = time.monotonic() + 10
        while True:  # the broker notices the close asynchronously
            w = Wire(limited.address, source="127.0.0.1")
            try:
                login(w)
            except (ConnectionError, OSError):
                w.close()
                assert time.monotonic() < deadline, "the freed slot never became usable"
                time.sleep(0.1)
                continue
            open_.append(w)
            break
    finally:
        for w in open_:
            w.close()


def test_time_limits(limited: BrokerProcess) -> None:
    """Opened together: an unauthenticated connection, an authenticated one that only ever
    sends half a frame, and one that sends a request every 300 ms."""
    started = time.monotonic()
    with (
        Wire(limited.address, source="127.0.0.4") as anonymous,
        Wire(limited.address, source="127.0.0.5") as half,
        Wire(limited.address, source="127.0.0.6") as busy,
    ):
        assert anonymous.call(
            ApiVersionsRequest(client_software_name="t", client_software_version="1")
        )
        login(half)
        login(busy)
        half.send(b"\x00\x00\x01\x00\x00\x03")  # 256 bytes announced, 2 sent
        stop = threading.Event()
        failures: list[BaseException] = []

        def keep_busy() -> None:
            try:
                while not stop.is_set():
                    metadata(busy)
                    stop.wait(0.3)
            except BaseException as exc:  # noqa: BLE001  (reported by the test thread)
                failures.append(exc)

        pinger = threading.Thread(target=keep_busy)
        pinger.start()
        try:
            assert anonymous.closed_by_peer(timeout=15)
            anonymous_closed = time.monotonic() - started
            assert half.closed_by_peer(timeout=20)
            half_closed = time.monotonic() - started
        finally:
            stop.set()
            pinger.join(10)
        assert not failures, failures
        assert anonymous_closed >= AUTH_TIMEOUT_MS / 1000 * 0.9
        assert half_closed >= IDLE_MS / 1000 * 0.9
        assert metadata(busy) is not None  # active for longer than the idle limit, still open


def test_connection_limits_change_at_runtime(broker_factory: Any) -> None:
    """Like Kafka's max.connections(.per.ip), the limits are dynamic broker configs."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    from tests.support import ops

    broker = broker_factory()
    entry = ConfigEntry("kafka.max_connections_per_ip", "1",
                        incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ResourceType.BROKER, "0", incremental_configs=[entry])
    client = ops.admin(broker.bootstrap)
    client.incremental_alter_configs([resource], request_timeout=15)[resource].result(20)
    with Wire(broker.address, source="127.0.0.7") as first:
        assert metadata(first) is not None
        with Wire(broker.address, source="127.0.0.7") as second:
            assert second.closed_by_peer()
        with Wire(broker.address, source="127.0.0.8") as other:
            assert metadata(other) is not None


def test_shutdown_answers_requests_already_read(broker_factory: Any, topic_name: str) -> None:
    """SIGTERM while a long-polling Fetch waits: the broker stops reading, answers the fetch
    when its wait ends, and only then closes the connection."""
    import signal
    from datetime import timedelta

    from kio.schema.fetch.v12.request import FetchPartition, FetchRequest, FetchTopic

    from tests.support import ops

    broker = broker_factory()
    ops.create_topic(broker.bootstrap, topic_name, 1)
    fetch = FetchRequest(
        replica_id=-1, max_wait=timedelta(milliseconds=1000), min_bytes=1, max_bytes=1 << 20,
        isolation_level=0, session_id=0, session_epoch=-1,
        topics=(FetchTopic(topic=topic_name, partitions=(
            FetchPartition(partition=0, fetch_offset=0, partition_max_bytes=1 << 20),)),),
        forgotten_topics_data=(), rack_id="",
    )
    with Wire(broker.address) as w:
        assert metadata(w) is not None
        w.send(w.request_bytes(fetch))
        _wait_until_read(w, broker.kafka_port)  # the fetch waits 1 s for data
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGTERM)
        answer = w.decode(FetchRequest, w.read_frame())
        assert answer.responses[0].partitions[0].error_code == 0
        assert w.closed_by_peer()
    assert broker.proc.wait(30) == 0


def _wait_until_read(w: Wire, server_port: int) -> None:
    """Until the server side of ``w``'s socket has nothing left in its receive queue (the
    process read everything sent), from /proc/net/tcp."""
    client_port = w.sock.getsockname()[1]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, queues = fields[1], fields[2], fields[4]
            if (int(local.split(":")[1], 16), int(remote.split(":")[1], 16)) == (
                server_port, client_port
            ) and int(queues.split(":")[1], 16) == 0:
                return
        time.sleep(0.01)
    raise AssertionError("the server never read the request")
