#!/usr/bin/env python3
"""Fail if any import circle exists between our modules. ``make lint`` runs this.

import-linter's layers contract (.importlinter) checks imports that cross
layers; a circle between modules of the same layer would slip past it, so this
script looks at the whole graph. It counts every import grimp sees: at module
level, inside functions and under TYPE_CHECKING.

The one allowed exception is Celery's idiom, in one module: the place that
enqueues work (boards.services.enqueue) imports the task functions inside the
functions that send them (boards.tasks imports the runtime, which uses the
services).
"""

from __future__ import annotations

import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("kaizen_web", "boards", "andon", "experiments", "bench")
ALLOWED = {("boards.services.enqueue", "boards.tasks")}


def circles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's
    algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph.modules):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def main() -> int:
    sys.path.insert(0, str(ROOT))
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False, exclude_type_checking_imports=False)
    for importer, imported in ALLOWED:
        graph.remove_import(importer=importer, imported=imported)
    found = circles(graph)
    if not found:
        print(f"import circles: none among {len(graph.modules)} modules (one allowed: Celery's idiom)")
        return 0
    for component in found:
        print(f"import circle among {len(component)} modules:", file=sys.stderr)
        members = set(component)
        for importer in component:
            for imported in sorted(graph.find_modules_directly_imported_by(importer) & members):
                lines = graph.get_import_details(importer=importer, imported=imported)
                where = ", ".join(f"l.{line['line_number']}" for line in lines)
                print(f"  {importer} -> {imported} ({where})", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
