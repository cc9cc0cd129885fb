#!/usr/bin/env python3
"""Structure check (CI): no import cycles between modules, no source file over the line limit.

The module graph is read from the source: every `crate::…`, `super::…` and `self::…` path in
non-test code (use statements, braces expanded, and inline paths), resolved to the longest
module prefix that exists. Two levels are checked:

- top level: `src/<name>` modules (auth, config, proxy, …) must form a DAG;
- inside each top-level module: files must form a DAG too, ignoring the edges between a module
  and its own ancestors (a child naming its parent's items, a parent re-exporting its child's).

Usage: python3 .ci/structure.py [--max-lines N]   (exit 1 on a problem)
"""

import os
import re
import sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
MAX_LINES = 600


def module_of(rel):
    """src-relative path -> module path tuple (lib.rs -> ())."""
    parts = rel[:-3].split(os.sep)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return tuple(parts)


def non_test(text):
    """The file without its `#[cfg(test)] mod tests { … }` block (always last in this codebase)."""
    m = re.search(r"^#\[cfg\(test\)\]\s*\n\s*mod tests", text, re.M)
    return text[: m.start()] if m else text


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def expand_use(tree):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e']."""
    tree = re.sub(r"\s+", "", tree)
    out = []

    def walk(prefix, s):
        depth, start, items = 0, 0, []
        for i, ch in enumerate(s):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                items.append(s[start:i])
                start = i + 1
        items.append(s[start:])
        for item in items:
            if not item:
                continue
            if "{" in item:
                head, rest = item.split("{", 1)
                walk(prefix + head, rest[:-1])
            else:
                out.append(prefix + item.split(" as ")[0])

    walk("", tree)
    return out


def main():
    limit = MAX_LINES
    if "--max-lines" in sys.argv:
        limit = int(sys.argv[sys.argv.index("--max-lines") + 1])
    files = {}
    for root, _, names in os.walk(SRC):
        for n in names:
            if n.endswith(".rs") and not (root == SRC and n == "main.rs"):
                rel = os.path.relpath(os.path.join(root, n), SRC)
                files[module_of(rel)] = rel
    modules = set(files)
    problems = []

    for mod, rel in sorted(files.items()):
        with open(os.path.join(SRC, rel), encoding="utf-8") as f:
            code = non_test(f.read())
        n = code.count("\n")
        if n > limit:
            problems.append(f"{rel}: {n} lines of non-test code (limit {limit})")

    def resolve(mod, path):
        segs = [s for s in path.split("::") if s]
        if not segs:
            return None
        if segs[0] == "crate":
            base, segs = (), segs[1:]
        elif segs[0] in ("super", "self"):
            base = mod
            while segs and segs[0] in ("super", "self"):
                if segs[0] == "super":
                    base = base[:-1]
                segs = segs[1:]
        else:
            # Relative to this module: a child module (`pub use child::X`, `child::f()`).
            base = mod
            if base + (segs[0],) not in modules:
                return None
        best = None
        for i in range(len(segs) + 1):
            cand = base + tuple(segs[:i])
            if cand in modules:
                best = cand
        return best

    edges = {m: set() for m in modules}
    for mod, rel in files.items():
        with open(os.path.join(SRC, rel), encoding="utf-8") as f:
            code = strip_comments(non_test(f.read()))
        paths = []
        for m in re.finditer(r"\buse\s+([^;]+);", code):
            paths += expand_use(m.group(1))
        paths += re.findall(r"\b((?:crate|super|self)(?:::\w+)+)", code)
        for p in paths:
            target = resolve(mod, p)
            if target is not None and target != mod:
                edges[mod].add(target)

    def cycles(nodes, succ):
        """Strongly connected components with more than one node (Tarjan)."""
        index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

        def strong(v):
            index[v] = low[v] = counter[0]
            counter[0] += 1
            stack.append(v)
            on.add(v)
            for w in succ(v):
                if w not in index:
                    strong(w)
                    low[v] = min(low[v], low[w])
                elif w in on:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))

        sys.setrecursionlimit(10000)
        for v in sorted(nodes):
            if v not in index:
                strong(v)
        return out

    name = lambda m: "::".join(m) or "crate"
    tops = {m[:1] for m in modules if m}
    top_edges = {t: set() for t in tops}
    for a, bs in edges.items():
        for b in bs:
            if a and b and a[:1] != b[:1]:
                top_edges[a[:1]].add(b[:1])
    for comp in cycles(tops, lambda t: top_edges[t]):
        problems.append("import cycle between modules: " + " <-> ".join(map(name, comp)))

    def ancestor(a, b):
        return a[: len(b)] == b or b[: len(a)] == a

    for top in sorted(tops):
        inner = {m for m in modules if m[:1] == top}
        succ = lambda v: [w for w in edges[v] if w in inner and not ancestor(v, w)]
        for comp in cycles(inner, succ):
            problems.append("import cycle between files: " + " <-> ".join(map(name, comp)))

    if "--graph" in sys.argv:
        for t in sorted(tops):
            print(f"{name(t)} -> {', '.join(sorted(map(name, top_edges[t]))) or '-'}")
    for p in problems:
        print(p)
    if problems:
        sys.exit(1)
    print(f"structure ok: {len(files)} files, {len(tops)} modules, no import cycles, "
          f"no file over {limit} lines")


if __name__ == "__main__":
    main()
