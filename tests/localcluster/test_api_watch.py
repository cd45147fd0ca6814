"""Watch semantics of the local API server: resume, 410 Gone, selectors, bookmarks, fan-out."""

from __future__ import annotations

import http.client
import json
import queue
import threading
import time
from typing import Any
from collections.abc import Callable
from urllib.parse import urlparse

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from elastic_kernels.localcluster.store import Store

from .conftest import GROUP, WIDGETS, ServerThread, widget

pytestmark = pytest.mark.timeout(40)


def pod(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "main", "image": "python:3.11"}]}}


class RawWatch:
    """A watch read line by line over a plain HTTP connection (no client library)."""

    def __init__(self, server: ServerThread, path: str) -> None:
        url = urlparse(server.url)
        self.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=20)
        self.conn.request("GET", path, headers=server.auth_headers)
        self.response = self.conn.getresponse()
        assert self.response.status == 200, self.response.read()

    def next(self) -> dict[str, Any]:
        line = self.response.readline()
        assert line, "watch ended"
        return json.loads(line)

    def rest(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.response.read().splitlines() if line.strip()]

    def close(self) -> None:
        self.conn.close()


class Collector:
    """Runs ``kubernetes.watch.Watch().stream(...)`` in a thread and queues what it yields."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.watch = watch.Watch()
        self.events: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._run, args=(fn, args, kwargs), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        try:
            for event in self.watch.stream(fn, *args, **kwargs):
                self.events.put(event)
        except Exception as exc:  # noqa: BLE001 - handed to the test thread
            self.events.put(exc)
        self.events.put(None)

    def take(self, count: int) -> list[Any]:
        out = []
        for _ in range(count):
            item = self.events.get(timeout=15)
            if isinstance(item, Exception):
                raise item
            assert item is not None, f"watch ended after {out}"
            out.append(item)
        return out

    def stop(self) -> None:
        self.watch.stop()


def summary(events: list[Any]) -> list[tuple[str, str]]:
    result = []
    for e in events:
        obj = e["object"]
        name = obj["metadata"]["name"] if isinstance(obj, dict) else obj.metadata.name
        result.append((e["type"], name))
    return result


@pytest.fixture
def store(apiserver: ServerThread) -> Store:
    assert apiserver.store is not None
    return apiserver.store


def test_watch_without_version_sends_current_state_then_changes(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("a"))
    core.create_namespaced_pod("default", pod("b"))
    collector = Collector(core.list_namespaced_pod, "default", timeout_seconds=20)
    try:
        assert sorted(summary(collector.take(2))) == [("ADDED", "a"), ("ADDED", "b")]
        core.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"x": "y"}}})
        core.delete_namespaced_pod("b", "default")
        core.create_namespaced_pod("default", pod("c"))
        events = collector.take(3)
        assert summary(events) == [("MODIFIED", "a"), ("DELETED", "b"), ("ADDED", "c")]
        assert events[0]["object"].metadata.labels == {"x": "y"}
        versions = [int(e["object"].metadata.resource_version) for e in events]
        assert versions == sorted(versions)
    finally:
        collector.stop()


def test_watch_resumes_from_resource_version(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("default", {"metadata": {"name": "before"}})
    listed = core.list_namespaced_config_map("default")
    rv = listed.metadata.resource_version
    core.create_namespaced_config_map("default", {"metadata": {"name": "after"}})
    core.patch_namespaced_config_map("before", "default", {"data": {"k": "v"}})
    core.delete_namespaced_config_map("after", "default")
    collector = Collector(core.list_namespaced_config_map, "default", resource_version=rv,
                          timeout_seconds=20)
    try:
        assert summary(collector.take(3)) == [("ADDED", "after"), ("MODIFIED", "before"),
                                             ("DELETED", "after")]
    finally:
        collector.stop()


@pytest.mark.apiserver_options(store={"watch_window": 5})
def test_watch_from_expired_version_is_410(apiserver: ServerThread,
                                           core: client.CoreV1Api) -> None:
    first = core.create_namespaced_config_map("default", {"metadata": {"name": "c0"}})
    for i in range(1, 12):
        core.create_namespaced_config_map("default", {"metadata": {"name": f"c{i}"}})
    old = first.metadata.resource_version
    raw = RawWatch(apiserver, f"/api/v1/namespaces/default/configmaps?watch=true"
                              f"&resourceVersion={old}")
    try:
        events = raw.rest()
    finally:
        raw.close()
    assert len(events) == 1 and events[0]["type"] == "ERROR"
    status = events[0]["object"]
    assert status["kind"] == "Status" and status["code"] == 410 and status["reason"] == "Expired"
    assert "too old resource version" in status["message"]
    # The official watch helper turns it into ApiException(410), which informers relist on.
    with pytest.raises(ApiException) as exc:
        for _ in watch.Watch().stream(core.list_namespaced_config_map, "default",
                                      resource_version=old, timeout_seconds=5):
            pass
    assert exc.value.status == 410
    # A recent version still resumes.
    recent = core.list_namespaced_config_map("default").metadata.resource_version
    core.delete_namespaced_config_map("c3", "default")
    collector = Collector(core.list_namespaced_config_map, "default", resource_version=recent,
                          timeout_seconds=10)
    try:
        assert summary(collector.take(1)) == [("DELETED", "c3")]
    finally:
        collector.stop()


def test_watch_label_selector_transitions(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("p", app="web"))
    core.create_namespaced_pod("default", pod("q", app="db"))
    collector = Collector(core.list_namespaced_pod, "default", label_selector="app=web",
                          timeout_seconds=20)
    try:
        assert summary(collector.take(1)) == [("ADDED", "p")]
        core.patch_namespaced_pod("q", "default", {"metadata": {"labels": {"x": "1"}}})
        core.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"app": "api"}}})
        core.patch_namespaced_pod("q", "default", {"metadata": {"labels": {"app": "web"}}})
        events = collector.take(2)
        assert summary(events) == [("DELETED", "p"), ("ADDED", "q")]
        # the DELETED carries the last matching content at the new resourceVersion
        assert events[0]["object"].metadata.labels == {"app": "web"}
    finally:
        collector.stop()


def test_watch_field_selector_on_node_name(apiserver: ServerThread, store: Store,
                                           core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod("p"))
    core.create_namespaced_pod("default", pod("q"))
    rv = core.list_pod_for_all_namespaces().metadata.resource_version
    collector = Collector(core.list_pod_for_all_namespaces, field_selector="spec.nodeName=node-1",
                          resource_version=rv, timeout_seconds=20)
    try:
        apiserver.call(lambda: store.bind("default", "q", "node-2"))
        apiserver.call(lambda: store.bind("default", "p", "node-1"))
        events = collector.take(1)
        assert summary(events) == [("ADDED", "p")]
        assert events[0]["object"].spec.node_name == "node-1"
    finally:
        collector.stop()


def test_watch_timeout_seconds_ends_the_stream(core: client.CoreV1Api) -> None:
    started = time.monotonic()
    events = list(watch.Watch().stream(core.list_namespaced_secret, "default", timeout_seconds=1,
                                       resource_version=core.list_namespaced_secret(
                                           "default").metadata.resource_version))
    assert events == []
    assert time.monotonic() - started < 15


@pytest.mark.apiserver_options(server={"bookmark_interval": 0.2})
def test_bookmarks(apiserver: ServerThread, core: client.CoreV1Api) -> None:
    rv = core.list_namespaced_pod("default").metadata.resource_version
    raw = RawWatch(apiserver, f"/api/v1/namespaces/default/pods?watch=1&resourceVersion={rv}"
                              "&allowWatchBookmarks=true&timeoutSeconds=10")
    try:
        core.create_namespaced_pod("default", pod("p"))
        added = raw.next()
        assert added["type"] == "ADDED"
        bookmark = raw.next()
        assert bookmark["type"] == "BOOKMARK"
        assert bookmark["object"]["kind"] == "Pod"
        assert int(bookmark["object"]["metadata"]["resourceVersion"]) >= int(
            added["object"]["metadata"]["resourceVersion"])
    finally:
        raw.close()


@pytest.mark.parametrize("path", [
    "/api/v1/namespaces/default/configmaps?watch=True&resourceVersion={rv}",
    "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}",
    "/api/v1/watch/namespaces/default/configmaps?resourceVersion={rv}",
    "/api/v1/watch/configmaps?resourceVersion={rv}",
])
def test_watch_spellings(apiserver: ServerThread, core: client.CoreV1Api, path: str) -> None:
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    raw = RawWatch(apiserver, path.format(rv=rv) + "&timeoutSeconds=10")
    try:
        core.create_namespaced_config_map("default", {"metadata": {"name": "c"}})
        event = raw.next()
        assert event["type"] == "ADDED" and event["object"]["metadata"]["name"] == "c"
        assert event["object"]["kind"] == "ConfigMap"
    finally:
        raw.close()


def test_watch_custom_resources(core: client.CoreV1Api, custom: client.CustomObjectsApi,
                                widgets: dict) -> None:
    rv = custom.list_namespaced_custom_object(GROUP, "v1", "default",
                                              WIDGETS)["metadata"]["resourceVersion"]
    collector = Collector(custom.list_namespaced_custom_object, GROUP, "v1", "default", WIDGETS,
                          resource_version=rv, timeout_seconds=20)
    try:
        custom.create_namespaced_custom_object(GROUP, "v1", "default", WIDGETS, widget("w"))
        custom.patch_namespaced_custom_object_status(GROUP, "v1", "default", WIDGETS, "w",
                                                     {"status": {"phase": "Running"}})
        custom.delete_namespaced_custom_object(GROUP, "v1", "default", WIDGETS, "w")
        events = collector.take(3)
        assert summary(events) == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]
        assert events[1]["object"]["status"] == {"phase": "Running"}
    finally:
        collector.stop()


def test_many_watchers_each_see_every_event(apiserver: ServerThread, store: Store,
                                            core: client.CoreV1Api) -> None:
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    watchers = [RawWatch(apiserver, f"/api/v1/namespaces/default/configmaps?watch=1"
                                    f"&resourceVersion={rv}&timeoutSeconds=30")
                for _ in range(100)]
    try:
        deadline = time.monotonic() + 15
        while apiserver.call(store.watcher_count) < 100:
            assert time.monotonic() < deadline, "watchers did not register"
            time.sleep(0.01)
        for i in range(20):
            core.create_namespaced_config_map("default", {"metadata": {"name": f"c{i}"}})
        for w in watchers:
            names = [w.next()["object"]["metadata"]["name"] for _ in range(20)]
            assert names == [f"c{i}" for i in range(20)]
    finally:
        for w in watchers:
            w.close()
    deadline = time.monotonic() + 15
    while apiserver.call(store.watcher_count) > 0:
        assert time.monotonic() < deadline, "closed watch connections leaked watchers"
        time.sleep(0.02)


def test_watch_errors(apiserver: ServerThread, core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as exc:
        list(watch.Watch().stream(core.list_namespaced_pod, "default", label_selector="a in (",
                                  timeout_seconds=1))
    assert exc.value.status == 400
    url = urlparse(apiserver.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        conn.request("GET", "/api/v1/namespaces/default/pods?watch=1&resourceVersion=abc",
                     headers=apiserver.auth_headers)
        response = conn.getresponse()
        assert response.status == 400
        assert json.loads(response.read())["kind"] == "Status"
    finally:
        conn.close()
