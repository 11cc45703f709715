#!/usr/bin/env python3
"""File-level import cycles inside a crate's src/ (`use crate::…` and `crate::…` paths).

Usage: .ci/modcycles.py SRC_DIR [SRC_DIR ...]
Prints each strongly connected component of more than one file; exits 1 if any.
The command layer (cli.rs) imports the domain, so a domain module that imports
`crate::cli` closes a cycle and fails here. Test files and `#[cfg(test)]` tails are
not counted."""
import os
import re
import sys

PATH = re.compile(r'crate::((?:[A-Za-z_][A-Za-z0-9_]*::)*[A-Za-z_][A-Za-z0-9_]*)')
GROUP = re.compile(r'use\s+crate::\{([^;]*)\};', re.S)
# `super::x`, `self::x` and `child::x` (a module the file declares with `mod child;`).
RELATIVE = re.compile(r'(?<![A-Za-z0-9_:])((?:super::)+|self::)?([A-Za-z_][A-Za-z0-9_]*)::')
CHILD = re.compile(r'^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([A-Za-z_][A-Za-z0-9_]*)\s*;', re.M)


def modules(src):
    files = {}
    for root, _, names in os.walk(src):
        below = os.path.relpath(root, src).split(os.sep)
        if 'tests' in below:
            continue
        for n in names:
            if not n.endswith('.rs') or n.endswith('_tests.rs'):
                continue
            p = os.path.join(root, n)
            rel = os.path.relpath(p, src)[:-3].split(os.sep)
            if rel[-1] in ('mod', 'lib', 'main'):
                rel = rel[:-1]
            files[tuple(rel)] = p
    return files


def edges(files):
    def resolve(path):
        for k in range(len(path), 0, -1):
            if tuple(path[:k]) in files:
                return tuple(path[:k])
        return None

    out = {m: set() for m in files}
    for m, p in files.items():
        text = open(p, encoding='utf-8', errors='replace').read()
        cut = text.find('#[cfg(test)]')
        if cut >= 0:
            text = text[:cut]
        # Comments (doc links included) are not imports.
        text = re.sub(r'//[^\n]*', '', text)
        targets = [t.split('::') for t in PATH.findall(text)]
        for g in GROUP.findall(text):
            for item in re.split(r',(?![^{]*\})', g):
                item = item.strip()
                if item:
                    targets.append(item.split('{')[0].strip(': ').split('::'))
        # Relative paths: resolved against this module (a file `a/b.rs` is module a::b).
        children = set(CHILD.findall(text))
        for prefix, first in RELATIVE.findall(text):
            if prefix.startswith('super'):
                up = prefix.count('super')
                base = list(m[:len(m) - up]) if up <= len(m) else None
            elif prefix == 'self::' or first in children:
                base = list(m)
            else:
                continue
            if base is not None:
                targets.append(base + [first])
        for t in targets:
            r = resolve([x for x in t if x])
            if r and r != m and not (len(m) > len(r) and m[:len(r)] == r):
                out[m].add(r)
    return out


def components(graph):
    sys.setrecursionlimit(10000)
    idx, low, on, stack, found, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        idx[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in idx:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], idx[w])
        if low[v] == idx[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(comp)

    for v in graph:
        if v not in idx:
            visit(v)
    return found


def main():
    bad = False
    for src in sys.argv[1:]:
        for comp in components(edges(modules(src))):
            bad = True
            names = ', '.join('/'.join(x) or 'lib' for x in sorted(comp))
            print(f"{src}: import cycle of {len(comp)} files: {names}")
    sys.exit(1 if bad else 0)


if __name__ == '__main__':
    main()
