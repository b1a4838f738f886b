#!/usr/bin/env bash
# Runs the README's command blocks in order, as a new user would after the two
# commands, and fails when one fails or no longer prints what the README says
# it prints. Part of the test command (scripts/test.sh), after the build.
#
# - ```sh blocks run in bash, each in a shell of its own, in a scratch
#   directory where build/, models/, scripts/ and client/ are the checkout's
#   (so the files the examples write stay out of the checkout). Background
#   servers a block starts are stopped when the block ends.
# - Expected output: comment lines that directly follow a command line (no
#   blank line between) must each appear in that command's output, e.g.
#       $C health
#       # SERVING
#   Comments after a command on its own line are explanations, not checked.
# - ```python blocks run in /usr/bin/python3 with PYTHONPATH=client/python.
# - A block right after a line `<!-- readme-test: skip: REASON -->` is not run
#   (it needs apt, npm, containers or python3-torch, or it is this command).
# - Before the first block, the server of "Two commands" is started as the
#   README says (scripts/run-server.sh) and kept running.
# Usage: scripts/test-readme.sh [README]  (BUILD_DIR: the build, default build)
set -euo pipefail
cd "$(dirname "$0")/.."
exec /usr/bin/python3 - "${1:-README.md}" <<'PYTHON'
import os, re, shutil, signal, subprocess, sys, tempfile, time

readme = sys.argv[1]
root = os.getcwd()
lines = open(readme).read().split("\n")

blocks = []  # (first line number, language, [lines], skip reason or None)
skip, i = None, 0
while i < len(lines):
    m = re.match(r"<!-- readme-test: skip: (.*) -->", lines[i])
    if m:
        skip = m.group(1)
    fence = re.match(r"```(\w*)\s*$", lines[i])
    if fence:
        j = i + 1
        while not lines[j].startswith("```"):
            j += 1
        if fence.group(1) in ("sh", "python"):
            blocks.append((i + 1, fence.group(1), lines[i + 1:j], skip))
        skip, i = None, j
    i += 1

def shell_script(body):
    """The block as bash: each command's output captured and checked."""
    out = ["set -u", "__fail() { echo \"readme-test: $1\" >&2; kill $(jobs -p) 2>/dev/null; exit 1; }"]
    commands = []  # [command text, [expected]]
    k = 0
    while k < len(body):
        line = body[k]
        if not line.strip():
            commands.append(None)  # a blank line ends expectations
        elif line.startswith("#"):
            if commands and commands[-1] is not None and line.startswith("# "):
                commands[-1][1].append(line[2:].strip())
        else:
            text = line
            while text.endswith("\\") and k + 1 < len(body):
                k += 1
                text = text + "\n" + body[k]
            commands.append([text, []])
        k += 1
    for n, item in enumerate(c for c in commands if c is not None):
        text, expected = item
        shown = text.replace("'", "'\\''")
        if re.search(r"&\s*(#.*)?$", text):  # a background server
            out.append(f"{text.rstrip()}")
            continue
        out.append(f"echo '+ {shown}' >&2")
        out.append(f"{{ {text}\n}} >\"$__dir/out{n}\" 2>&1 || {{ cat \"$__dir/out{n}\" >&2; __fail 'failed: {shown}'; }}")
        out.append(f"cat \"$__dir/out{n}\" >&2")
        for e in expected:
            q = e.replace("'", "'\\''")
            out.append(f"grep -qF -- '{q}' \"$__dir/out{n}\" || __fail 'the output of: {shown}\n  does not contain: {q}'")
    out.append("kill $(jobs -p) 2>/dev/null; wait; exit 0")
    return "\n".join(out)

build = os.environ.get("BUILD_DIR", "build")
scratch = tempfile.mkdtemp(prefix="readme-test-")
for name in ("models", "scripts", "client"):
    os.symlink(os.path.join(root, name), os.path.join(scratch, name))
os.symlink(os.path.join(root, build), os.path.join(scratch, "build"))
env = dict(os.environ, PYTHONPATH=os.path.join(scratch, "client/python"))
server = subprocess.Popen(["scripts/run-server.sh"], cwd=root, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
started = ""
failed = 0
try:
    for line in server.stdout:  # the build first, then its start line
        started += line
        if "listening on" in line:
            break
    if "listening on 127.0.0.1:50051" not in started:
        print("readme-test: scripts/run-server.sh did not start:\n" + started, file=sys.stderr)
        sys.exit(1)
    ran = 0
    for number, language, body, reason in blocks:
        where = f"{readme}:{number}"
        if reason is not None:
            print(f"readme-test: {where}: skipped ({reason})")
            continue
        ran += 1
        t = time.time()
        if language == "sh":
            work = tempfile.mkdtemp(dir=scratch)
            argv, stdin, block_env = ["bash", "-c", shell_script(body)], None, dict(env, __dir=work)
        else:
            argv, stdin, block_env = ["/usr/bin/python3", "-"], "\n".join(body), env
        # A session of its own, so that whatever the block started goes with it.
        proc = subprocess.Popen(argv, cwd=scratch, env=block_env, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            _, stderr = proc.communicate(stdin, timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, stderr = proc.communicate()
            stderr += "\nreadme-test: timed out after 300 s"
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        run = subprocess.CompletedProcess(argv, proc.returncode, "", stderr)
        if run.returncode != 0:
            failed += 1
            print(f"readme-test: {where}: FAILED\n{run.stderr[-4000:]}", file=sys.stderr)
        else:
            print(f"readme-test: {where}: ok ({time.time() - t:.1f} s)")
    print(f"readme-test: {ran - failed} of {ran} blocks ok" + (f", {failed} failed" if failed else ""))
finally:
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)
    shutil.rmtree(scratch, ignore_errors=True)
sys.exit(1 if failed else 0)
PYTHON
