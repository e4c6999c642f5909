"""Child side of `rollout.sandbox`: isolate this fresh process, drop privileges, then run the program.

Run as `python -I -S sandbox_launcher.py SPEC_JSON` by `rollout.sandbox` (never imported by the parent).
It replaces subprocess's `preexec_fn`: a `preexec_fn` runs Python between fork and exec inside a process
forked from a *threaded* parent (the sandbox pool), which can deadlock on locks held by other threads.
This file instead starts as a fresh single-threaded interpreter, so unshare / mount / setrlimit / setuid
are safe here. Standard library only, and as few imports as possible: it runs once per program.

Order matters. Namespaces and mounts need root, so they come first. A new pid namespace only applies to
children, so this process forks: the child is the namespace's init and runs the program, this process
waits and mirrors its exit status. The child mounts a fresh /proc, writes the status file while still
root (the program cannot forge it), sets rlimits before the uid drop (so RLIMIT_NPROC is charged to the
new uid), and sets PR_SET_NO_NEW_PRIVS and the parent-death signal last.
"""

import ctypes
import json
import os
import resource
import signal
import sys
import types

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 4096, 8192, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 0x1  # same number on x86-64 and arm64
PRIVATE_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
ROOT_CHOICES = (
    (CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID, ("network", "mount", "pid")),
    (CLONE_NEWNET | CLONE_NEWNS, ("network", "mount")),
    (CLONE_NEWNET, ("network",)),
)
USER_CHOICES = tuple((CLONE_NEWUSER | flags, ("userns", *names)) for flags, names in ROOT_CHOICES)

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _blocking_ancestor(path: str) -> str | None:
    """The topmost ancestor of `path` that other users may not traverse (e.g. /root, mode 0700)."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts)):
        ancestor = "/" + "/".join(parts[:i])
        if not os.stat(ancestor).st_mode & 0o001:
            return ancestor
    return None


def _expose_interpreter(status: dict) -> None:
    """Keep this interpreter importable after the uid drop when it lives under a private directory
    (pyenv / uv Pythons under /root): a tmpfs over that directory hides the rest of it, and the
    interpreter's directories are bound back at their own paths."""
    needed = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, *sys.path) if p and os.path.isdir(p)}
    by_blocker: dict[str, list[str]] = {}
    for path in sorted(needed):
        blocker = _blocking_ancestor(path)
        if blocker is not None and not any(path.startswith(p + "/") for p in by_blocker.get(blocker, [])):
            by_blocker.setdefault(blocker, []).append(path)
    for n, (blocker, paths) in enumerate(by_blocker.items()):
        staged = []
        for i, path in enumerate(paths):
            stage = f"/tmp/.expose-{n}-{i}"
            os.mkdir(stage, 0o755)
            _mount(path, stage, None, MS_BIND | MS_REC, None)
            staged.append((stage, path))
        _mount("tmpfs", blocker, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
        for stage, path in staged:
            os.makedirs(path, 0o755, exist_ok=True)
            _mount(stage, path, None, MS_MOVE, None)
            _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)
            os.rmdir(stage)
        status["exposed"] = status.get("exposed", []) + paths


def _unshare(status: dict, is_root: bool) -> None:
    """Enter the most namespaces this kernel / container allows. Without root, a user namespace (mapping
    only the caller's own uid and gid onto themselves) is what lets the others be created."""
    uid, gid = os.getuid(), os.getgid()
    choices = ROOT_CHOICES if is_root else USER_CHOICES
    for flags, names in choices:
        try:
            _check(_libc.unshare(flags), f"unshare({'|'.join(names)})")
        except OSError as exc:
            status["errors"].append(str(exc))
            continue
        status.update({name: True for name in names})
        break
    if status.get("userns"):
        for path, text in (("uid_map", f"{uid} {uid} 1"), ("setgroups", "deny"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{path}", "w") as f:
                f.write(text)


def _isolate(spec: dict, status: dict, is_root: bool) -> str:
    """Namespaces, then a small private tmpfs on the world-writable dirs and a read-only /; the workdir."""
    _unshare(status, is_root)
    if not status["mount"]:
        return spec["host_workdir"]
    try:  # nothing mounted below may propagate back to the host: no private mounts, no mounts at all
        _mount(None, "/", None, MS_REC | MS_PRIVATE, None)
        status["readonly_root"] = _readonly_tree(status)
        tmpfs_opts = f"size={spec['tmpfs_mb']}m,mode=1777,nr_inodes=4096"
        for path in PRIVATE_TMP_DIRS:
            if os.path.isdir(path):
                _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, tmpfs_opts)
        os.mkdir("/tmp/sandbox", 0o700)
        if is_root:  # only the uid drop can make the interpreter unreadable
            _expose_interpreter(status)
    except OSError as exc:
        status["errors"].append(str(exc))
        status["mount"] = False
        return spec["host_workdir"]
    if not status["readonly_root"]:  # older kernels: read-only / itself; other mounts keep their flags
        try:
            _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)
            status["readonly_root"] = "root mount only"
        except OSError as exc:
            status["errors"].append(str(exc))
    return "/tmp/sandbox"


def _readonly_tree(status: dict) -> bool:
    """Every mount of this namespace's copy of the tree read-only (mount_setattr, Linux >= 5.12); mounts
    made afterwards (private tmpfs, /proc) are writable."""
    attr = (ctypes.c_uint64 * 4)(MOUNT_ATTR_RDONLY, 0, 0, 0)  # struct mount_attr: set, clr, propagation, userns
    mount_setattr = _libc.syscall
    mount_setattr.restype = ctypes.c_long
    ret = mount_setattr(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD), b"/",
                        ctypes.c_uint(AT_RECURSIVE), attr, ctypes.c_size_t(ctypes.sizeof(attr)))  # fmt: skip
    if ret != 0:
        status["errors"].append(f"mount_setattr(/, AT_RECURSIVE, RDONLY): {os.strerror(ctypes.get_errno())}")
    return ret == 0


def _set_limits(spec: dict, status: dict) -> None:
    limits = {
        resource.RLIMIT_CPU: spec["cpu_s"],
        resource.RLIMIT_AS: spec["memory_mb"] << 20,
        resource.RLIMIT_FSIZE: spec["file_size_mb"] << 20,
        resource.RLIMIT_NOFILE: spec["max_open_files"],
        resource.RLIMIT_CORE: 0,
    }
    # RLIMIT_NPROC counts every process of the real uid: it only means "this program" when the program
    # has a uid (or user namespace) of its own; otherwise it would count the caller's other processes.
    if status["uid"] is not None or status.get("userns"):
        limits[resource.RLIMIT_NPROC] = spec["max_processes"]
    for which, value in limits.items():
        resource.setrlimit(which, (value, value))


def _run_program(spec: dict, status: dict, status_file, code: str, workdir: str) -> None:
    """In the (new pid namespace's init) process: finish isolating, drop privileges, run the program."""
    if status.get("pid"):  # a /proc that shows this namespace's processes only
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    uid = spec["uid"] if os.geteuid() == 0 else None
    main_path = os.path.join(workdir, "main.py")
    with open(main_path, "w", encoding="utf-8") as f:
        f.write(code)
    if uid is not None:
        os.chown(workdir, uid, uid)
        os.chown(main_path, uid, uid)
        status["uid"] = uid
    json.dump(status, status_file)
    status_file.close()
    _set_limits(spec, status)
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    _libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)  # after setuid, which clears it; 9 = SIGKILL
    os.chdir(workdir)
    sys.argv = ["main.py"]
    sys.path.insert(0, workdir)  # -I left the script's own directory out of sys.path
    # Like `python main.py`, minus runpy: runpy imports pkgutil & co., which costs more than most programs.
    main_module = types.ModuleType("__main__")
    main_module.__file__ = "main.py"
    sys.modules["__main__"] = main_module
    exec(compile(code, "main.py", "exec"), main_module.__dict__)


def _wait_and_mirror(pid: int) -> None:
    """Outer launcher: wait for the namespace's init and leave with the same exit code or signal.

    SIGUSR1 from `rollout.sandbox` (wall-clock timeout) makes it SIGKILL that init through a pidfd, which
    makes the kernel kill every process of the namespace; this process then reaps the init, so nothing
    is left as a zombie for a non-reaping container PID 1.
    """
    pidfd = os.pidfd_open(pid)
    signal.signal(signal.SIGUSR1, lambda *_: signal.pidfd_send_signal(pidfd, signal.SIGKILL))
    _, wait_status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(wait_status)
    if code < 0:
        if -code != signal.SIGKILL:
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code & 0xFF)


def main() -> None:
    spec = json.loads(sys.argv[1])
    sys.path.extend(spec["site_packages"])  # started with -S: site-packages without the .pth processing
    # Read the code and open the status file before any mount: the private /tmp may hide the run dir.
    with open(spec["code_path"], encoding="utf-8") as f:
        code = f.read()
    status_file = open(spec["status_path"], "w", encoding="utf-8")
    status: dict = {"network": False, "mount": False, "pid": False, "readonly_root": False, "uid": None, "errors": []}
    workdir = _isolate(spec, status, is_root=os.geteuid() == 0)
    if status["pid"]:  # unshare(CLONE_NEWPID) applies to children: the program runs in a forked init
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # until _wait_and_mirror installs its handler
        pid = os.fork()
        if pid:
            status_file.close()
            _wait_and_mirror(pid)
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    _run_program(spec, status, status_file, code, workdir)


if __name__ == "__main__":
    main()
