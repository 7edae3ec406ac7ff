"""``doctor --cargo``: which crate of an extension's tree turns on tokio's fork-unsafe features.

Cargo unifies features: one crate anywhere in the tree that asks tokio for ``full`` (or
``parking_lot``, ``signal``, ``process``) turns them on for every tokio user in the binary,
forksafe's runtime included. This reads ``cargo metadata`` (the resolved graph, offline when
``CARGO_NET_OFFLINE`` is set), finds each crate whose own request enables one of the three, and
prints its dependency path from the extension.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import deque
from dataclasses import dataclass
from typing import Any

HAZARDS = ("parking_lot", "signal", "process")


class CargoError(Exception):
    """cargo is missing, the manifest is not there, or it does not resolve."""


@dataclass(frozen=True)
class Enabler:
    """A crate that turns on ``feature`` of tokio, and how it gets there from the root."""

    feature: str
    crate: str
    version: str
    request: str
    path: tuple[str, ...]


@dataclass(frozen=True)
class TokioReport:
    """One resolved tokio in the tree."""

    version: str
    features: tuple[str, ...]
    enablers: tuple[Enabler, ...]


def _metadata(manifest: str) -> dict[str, Any]:
    if not os.path.isfile(manifest):
        raise CargoError(f"no such Cargo.toml: {manifest}")
    cargo = os.environ.get("CARGO", "cargo")
    command = [cargo, "metadata", "--format-version", "1", "--manifest-path", manifest]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    except FileNotFoundError:
        raise CargoError(f"cargo not found ({cargo!r}): install Rust or set CARGO") from None
    except subprocess.TimeoutExpired:
        raise CargoError("cargo metadata took more than 10 minutes") from None
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        raise CargoError(f"cargo metadata failed for {manifest}:\n{tail}")
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def _expand(features: dict[str, list[str]], asked: list[str]) -> set[str]:
    """tokio's features that ``asked`` turns on, through tokio's own feature table."""
    seen: set[str] = set()
    todo = list(asked)
    while todo:
        name = todo.pop()
        if name in seen or "/" in name or name.startswith("dep:"):
            continue
        seen.add(name)
        todo.extend(features.get(name, []))
    return seen


def analyse(manifest: str) -> list[TokioReport]:
    """Every tokio in the resolved tree of ``manifest``, with the crates that turn on a hazard.

    Raises CargoError when cargo cannot resolve the manifest.
    """
    meta = _metadata(manifest)
    packages = {p["id"]: p for p in meta["packages"]}
    resolve = meta.get("resolve") or {}
    nodes = {n["id"]: n for n in resolve.get("nodes", [])}
    # The manifest's package first, then the other workspace members: cargo unifies tokio's
    # features across every member it builds together.
    members = list(meta["workspace_members"])
    wanted = os.path.realpath(manifest)
    root = next(
        (m for m in members if os.path.realpath(packages[m]["manifest_path"]) == wanted),
        resolve.get("root"),
    )
    roots = [root, *(m for m in members if m != root)] if root else members
    # Breadth-first from each root in turn (the manifest's package first): the shortest path
    # from the extension to each crate it reaches.
    parent: dict[str, str | None] = {}
    for start in roots:
        if start in parent:
            continue
        parent[start] = None
        queue = deque([start])
        while queue:
            here = queue.popleft()
            for dep in nodes.get(here, {}).get("deps", []):
                kinds = {k.get("kind") for k in dep.get("dep_kinds", [])}
                if not kinds & {None, "build"} or dep["pkg"] in parent:
                    continue
                parent[dep["pkg"]] = here
                queue.append(dep["pkg"])

    def path_to(pkg: str) -> tuple[str, ...]:
        chain: list[str] = []
        at: str | None = pkg
        while at is not None:
            chain.append(packages[at]["name"])
            at = parent[at]
        return tuple(reversed(chain))

    reports = []
    for tokio_id in (i for i in parent if packages[i]["name"] == "tokio"):
        tokio = packages[tokio_id]
        table: dict[str, list[str]] = tokio.get("features", {})
        resolved = tuple(sorted(nodes.get(tokio_id, {}).get("features", [])))
        enablers = []
        for pkg_id in parent:
            if pkg_id == tokio_id:
                continue
            pkg = packages[pkg_id]
            enabled_own = set(nodes.get(pkg_id, {}).get("features", []))
            for dep in pkg["dependencies"]:
                if dep["name"] != "tokio" or dep.get("kind") == "dev":
                    continue
                if not _matches(dep.get("req", "*"), tokio["version"]):
                    continue
                key = dep.get("rename") or "tokio"
                asked: list[str] = list(dep.get("features", []))
                if dep.get("uses_default_features", True):
                    asked.append("default")
                # Features of the crate itself that forward to tokio's ("tokio/x", "tokio?/x").
                for own, items in pkg.get("features", {}).items():
                    if own in enabled_own:
                        for item in items:
                            for prefix in (f"{key}/", f"{key}?/"):
                                if item.startswith(prefix):
                                    asked.append(item[len(prefix) :])
                turned_on = _expand(table, asked)
                for feature in HAZARDS:
                    if feature in turned_on and feature in resolved:
                        enablers.append(
                            Enabler(
                                feature=feature,
                                crate=pkg["name"],
                                version=pkg["version"],
                                request=", ".join(sorted(set(asked) - {"default"})) or "default",
                                path=path_to(pkg_id),
                            )
                        )
        reports.append(TokioReport(tokio["version"], resolved, tuple(enablers)))
    return reports


def _matches(req: str, version: str) -> bool:
    """Whether the requirement can name this tokio (major version only: one tokio per major)."""
    major = version.split(".")[0]
    digits = req.lstrip("^~=>< ").split(".")[0]
    return not digits.isdigit() or digits == major


def render(manifest: str, reports: list[TokioReport]) -> str:
    """The human-readable answer."""
    if not reports:
        return f"{manifest}: no tokio in the dependency tree"
    lines = []
    for report in reports:
        lines.append(f"tokio {report.version}: features {', '.join(report.features)}")
        for feature in HAZARDS:
            if feature not in report.features:
                lines.append(f"  {feature}: off")
                continue
            lines.append(f"  {feature}: ON, turned on by:")
            for e in (e for e in report.enablers if e.feature == feature):
                lines.append(f"    {e.crate} {e.version} (asks tokio for: {e.request})")
                lines.append(f"      path: {' -> '.join(e.path)}")
        if any(f in report.features for f in HAZARDS):
            lines.append(
                "  fix: docs/extension-authors.md, "
                '"When a dependency turns on tokio\'s parking_lot"'
            )
    return "\n".join(lines)
