#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Every relative link in README.md, CHANGELOG.md and docs/*.md points at a
file that exists and, with a #fragment, at a heading that exists there (GitHub's
anchor rules). External links are not fetched.

usage: check_links.py SOURCE_DIR
Prints one line per broken link and exits 1 if there is any."""
import glob
import os
import re
import sys

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def prose_lines(text):
    """Lines outside fenced code blocks, with inline code removed."""
    fence = None
    for n, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^\s*(```|~~~)", line)
        if m:
            if fence is None:
                fence = m.group(1)
            elif fence == m.group(1):
                fence = None
            continue
        if fence is None:
            yield n, re.sub(r"`[^`]*`", "", line)


def slug(heading):
    h = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    h = h.lower()
    h = re.sub(r"[^\w\- ]", "", h)
    return h.replace(" ", "-")


def anchors(path, cache={}):
    if path not in cache:
        found, seen = set(), {}
        with open(path, encoding="utf-8") as f:
            text = f.read()
        fence = None
        for line in text.splitlines():
            m = re.match(r"^\s*(```|~~~)", line)
            if m:
                fence = m.group(1) if fence is None else (None if fence == m.group(1) else fence)
                continue
            if fence is None:
                h = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
                if h:
                    s = slug(h.group(1))
                    k = seen.get(s, 0)
                    seen[s] = k + 1
                    found.add(s if k == 0 else f"{s}-{k}")
        found.update(re.findall(r'<a (?:name|id)="([^"]+)"', text))
        cache[path] = found
    return cache[path]


def main():
    root = os.path.abspath(sys.argv[1])
    files = [os.path.join(root, "README.md"), os.path.join(root, "CHANGELOG.md")]
    files += sorted(glob.glob(os.path.join(root, "docs", "*.md")))
    bad = 0
    checked = 0
    for src in files:
        if not os.path.exists(src):
            continue
        with open(src, encoding="utf-8") as f:
            text = f.read()
        for n, line in prose_lines(text):
            for m in list(LINK.finditer(line)) + list(IMAGE.finditer(line)):
                target = m.group(1)
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                    continue
                checked += 1
                file_part, _, frag = target.partition("#")
                dest = src if not file_part else os.path.normpath(
                    os.path.join(os.path.dirname(src), file_part))
                rel = os.path.relpath(src, root)
                if not dest.startswith(root + os.sep) and dest != root:
                    print(f"{rel}:{n}: {target}: leaves the repository")
                    bad += 1
                elif not os.path.exists(dest):
                    print(f"{rel}:{n}: {target}: no such file")
                    bad += 1
                elif frag and dest.endswith(".md") and frag not in anchors(dest):
                    print(f"{rel}:{n}: {target}: no heading with anchor #{frag}")
                    bad += 1
    if bad:
        sys.exit(1)
    print(f"ok: {checked} relative links in {len(files)} files")


if __name__ == "__main__":
    main()
