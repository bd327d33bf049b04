#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""bustd.py - an early userspace out-of-memory killer for Linux, in one file.

When a Linux machine runs out of memory it first thrashes (frozen desktop,
dead SSH) and only then does the kernel's own OOM killer act, often on the
wrong process.  bustd.py watches memory and acts *early*: it kills the one
process that is eating the machine, politely (SIGTERM) and then firmly
(SIGKILL), before the freeze, and never PID 1, a kernel thread or itself.

Decision rule (defaults, all configurable, all printed at start-up)
  SIGTERM  when MemAvailable <= 10 % of RAM  and  free swap <= 10 % of swap
  SIGKILL  when MemAvailable <=  5 % of RAM  and  free swap <=  5 % of swap
           (no swap configured counts as "swap low")
  SIGTERM  also when memory pressure (PSI "some" avg10) >= 25 while
           MemAvailable <= 15 %: thrashing that a large swap would hide.
  Victim   the highest /proc/PID/oom_score (ties: larger RSS), never a
           protected process (sshd, systemd, package managers, ...).

How it stays cheap and quick
  Each poll costs one sysinfo(2) call; /proc/meminfo and PSI are read only
  when sysinfo says memory may be near a threshold.  The sleep between polls
  is the time the headroom would last at a worst-case fill rate (10 ms ..
  3 s); a PSI trigger, and in cgroup v1 mode a usage threshold event, wake
  it early.  Victims are signalled through pidfds, so a recycled PID is
  never hit.  The daemon locks itself in memory and sets its own
  oom_score_adj to -1000 where it may.

Requirements
  Linux (MemAvailable since 3.14, PSI since 4.20, pidfd since 5.3,
  process_mrelease since 5.15: each one missing costs a feature, with one
  warning, never the daemon), Python 3.6 or newer, only the standard
  library; it even runs without ctypes.  Root to kill other users' processes.

Install: copy this one file, e.g. install -m 755 bustd.py /usr/local/sbin/bustd
Run `bustd.py --help` for the manual.
"""

# Only built-in modules at import time: the daemon's RSS is measured against
# a bare interpreter.  argparse, ctypes, select, socket and re are imported
# where they are used.
import errno
import os
import sys
import time

try:
    # signal.py wraps _signal in IntEnums and so imports enum (~0.8 MiB of
    # RSS); the C module has the same functions with plain int constants.
    import _signal as signal
except ImportError:  # not CPython
    import signal

__version__ = '1.0.0'
PROG = 'bustd'

# ============================================================================
# Constants and system call bindings
# ============================================================================

EXIT_OK = 0
EXIT_ENV = 1      # the environment is unusable (no /proc, not Linux, ...)
EXIT_USAGE = 2    # bad command line

DEFAULT_MEM_PERCENT = (10.0, 5.0)
DEFAULT_SWAP_PERCENT = (10.0, 5.0)
DEFAULT_PSI_AVG10 = 25.0             # bustd's default
DEFAULT_PSI_MEM_MAX_PERCENT = 15.0   # bustd's figure

# Polling.  The sleep is the time the headroom above the SIGTERM level lasts
# at the fastest rate this machine can fill memory (see FillModel), clamped
# to [floor, ceiling].  The floor bounds how far a faster hog can overshoot
# a level between two polls (3 GB/s x 10 ms = 30 MB).  The ceiling keeps a
# big idle box at or below earlyoom's idle CPU (one wake-up every 3 s).
POLL_FLOOR_S = 0.010
POLL_CEILING_S = 3.0
LIMIT_REFRESH_S = 1.0   # cgroup limits are re-read at most this often
# The fill-rate model: calibrated at start-up by faulting in CALIBRATE_KIB
# of fresh memory at C speed (4 KiB pages, then transparent huge pages), the
# best of CALIBRATE_REPEATS: one thread at C speed into free memory, which a
# real hog (its own work per page, fragmentation, reclaim near the levels)
# does not beat; in the lab's 1 GiB guest the calibration says 1.1 GiB/s
# and the fastest C hog drops memory at 0.25-0.4 GB/s.  FILL_SAFETY x that
# per pair of CPUs is assumed: on a 2-core host two C threads fault 1.5x as
# fast as one (3.3 vs 2.2 GB/s), so 1.5 covers a hog on both CPUs.
# Never assumed slower than FILL_FLOOR_KIB_S (a calibration disturbed by a
# busy moment), nor faster than FILL_CAP_KIB_S, the old universal figure
# (8 GiB/s): the model only ever lengthens the old schedule's sleeps where
# this machine cannot fill that fast.  Readings teach it too: a drop seen
# between two polls faster than the model raises the rate at once.
CALIBRATE_KIB = 16 * 1024
CALIBRATE_REPEATS = 3
FILL_SAFETY = 1.5
FILL_FLOOR_KIB_S = 512 * 1024
FILL_CAP_KIB_S = 8 * 1024 * 1024
LEARNED_FORGET_S = 10.0   # a learned rate is kept this long after it was last seen
# Idle wake-ups (readings far from every level) run a short loop: one
# poll(2), one cheap reading, the schedule; the full step (thresholds,
# reports, helpers, the watchdog, a warm victim) at least this often.
IDLE_STEP_EVERY_S = 1.0

# The pre-armed victim.  Within ARM_BAND_PERCENT of the total above the
# SIGTERM level (or in the exact-reading band, if wider) the processes are
# ranked ahead of time, at most every ARM_REFRESH_S and never more than
# 1/ARM_COST_FACTOR of the time (a slow ranking on a box with thousands of
# processes), and the victim is held by its pidfd.  A kill then validates
# it with a few reads of its own /proc files instead of ranking again; a
# ranking older than ARM_MAX_AGE_S is never used.
ARM_BAND_PERCENT = 5.0
ARM_REFRESH_S = 0.25
ARM_COST_FACTOR = 20
ARM_MAX_AGE_S = 1.0
# Swap fills at the speed of the swap device; earlyoom's 800 MB/s is generous.
SWAP_FILL_RATE_KIB_S = 800 * 1024

# Killing.
TERM_GRACE_S = 5.0      # SIGTERM -> SIGKILL if the victim is still alive
KILL_WAIT_S = 10.0      # give up waiting for an exit after this long
KILL_POLL_S = 0.010     # memory re-check interval while waiting
NO_VICTIM_RETRY_S = 1.0  # back-off when nothing may be killed
DRY_RUN_LOG_EVERY_S = 1.0
PREFER_ADJUST = 300     # --prefer / --avoid shift of oom_score (earlyoom's)

# Helpers (notifications and hooks).
HELPER_TIMEOUT_S = 10.0      # then the helper's process group is killed
BEFORE_HOOK_BUDGET_S = 2.0   # -P: the kill waits at most this long
WARN_EVERY_S = 60.0          # --warn: at most one warning per minute

# PSI trigger: wake when tasks stall on memory for 150 ms within 1 s.
# Unprivileged writers may only use windows that are multiples of 2 s.
PSI_TRIGGERS = (b'some 150000 1000000', b'some 300000 2000000')

# /proc/PID/stat flags (include/linux/sched.h).
PF_EXITING = 0x00000004
PF_KTHREAD = 0x00200000

# Capabilities (include/uapi/linux/capability.h).
CAP_DAC_READ_SEARCH = 2
CAP_KILL = 5
CAP_IPC_LOCK = 14
CAP_SYS_PTRACE = 19
CAP_SYS_RESOURCE = 24

# Since Linux 5.1 new system calls share one number on every architecture
# except alpha; these are the three we need.
SYS_PIDFD_SEND_SIGNAL = 424
SYS_PIDFD_OPEN = 434
SYS_PROCESS_MRELEASE = 448

MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4
EFD_NONBLOCK, EFD_CLOEXEC = 0o4000, 0o2000000

SIGNAL_NAMES = {signal.SIGTERM: 'SIGTERM', signal.SIGKILL: 'SIGKILL'}

# Never killed unless --no-default-unkillables: globs on the 15-character
# process name (comm), so "systemd-journald" is "systemd-journal".
DEFAULT_UNKILLABLES = (
    'init', 'systemd', 'systemd-*',                  # init and its core
    'sshd', 'sshd-*', 'dropbear',                    # the way back in
    'rsyslogd', 'syslog-ng', 'syslogd', 'klogd',     # where the kill is logged
    'dbus-daemon', 'dbus-broker*',
    # package managers: killed mid-transaction they leave a broken system
    'apt', 'apt-get', 'aptitude', 'dpkg', 'unattended-upgr',
    'dnf', 'yum', 'rpm', 'microdnf', 'zypper', 'pacman', 'apk', 'opkg',
    'packagekitd',
)


class KernelCalls(object):
    """The optional system calls, each None where this kernel or Python lacks it.

    sysinfo(reading) fills a Reading's totals; pidfd_open(pid) -> fd;
    pidfd_send_signal(fd, sig); process_mrelease(fd); mlockall(flags);
    eventfd() -> fd.  `missing` lists what is off, for one start-up warning.
    """

    def __init__(self):
        self.sysinfo = None
        self.pidfd_open = None
        self.pidfd_send_signal = None
        self.process_mrelease = None
        self.mlockall = None
        self.malloc_trim = None
        self.eventfd = None
        self.has_ctypes = False
        self.missing = []


def load_kernel_calls(use_ctypes=True):
    """Return a KernelCalls with everything this kernel and Python offer."""
    calls = KernelCalls()
    ctypes = None
    if use_ctypes:
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            calls.has_ctypes = True
        except (ImportError, OSError):
            ctypes = None
    if ctypes is None:
        calls.missing.append('ctypes (no sysinfo, mlockall, process_mrelease)')
    else:
        calls.sysinfo = _bind_sysinfo(ctypes, libc)
        calls.mlockall = _bind_libc_call(ctypes, libc, 'mlockall')
        calls.malloc_trim = _bind_libc_call(ctypes, libc, 'malloc_trim')   # glibc only
        eventfd = _bind_libc_call(ctypes, libc, 'eventfd')
        if eventfd is not None:
            calls.eventfd = lambda: eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
    calls.pidfd_open = getattr(os, 'pidfd_open', None)
    calls.pidfd_send_signal = getattr(signal, 'pidfd_send_signal', None)
    syscall_ok = ctypes is not None and not os.uname()[4].startswith('alpha')
    if syscall_ok:
        syscall = libc.syscall
        syscall.restype = ctypes.c_long
        if calls.pidfd_open is None:
            calls.pidfd_open = _syscall(ctypes, syscall, SYS_PIDFD_OPEN, 0)
        if calls.pidfd_send_signal is None:
            calls.pidfd_send_signal = _syscall(
                ctypes, syscall, SYS_PIDFD_SEND_SIGNAL, None, 0)
        calls.process_mrelease = _syscall(ctypes, syscall, SYS_PROCESS_MRELEASE, 0)
    if not _probe_pidfd(calls):
        calls.pidfd_open = calls.pidfd_send_signal = None
        calls.missing.append('pidfd (kill() with a start-time check instead)')
    if calls.process_mrelease is not None and not _probe_mrelease(calls):
        calls.process_mrelease = None
    return calls


def _bind_libc_call(ctypes, libc, name):
    """Return libc's `name` as a callable raising OSError, or None."""
    func = getattr(libc, name, None)
    if func is None:
        return None

    def call(*args):
        result = func(*args)
        if result == -1:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return result
    return call


def _syscall(ctypes, syscall, number, *trailing):
    """Return a callable for syscall(number, *args, *trailing) raising OSError."""
    def call(*args):
        result = syscall(number, *(args + trailing))
        if result < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return result
    return call


def _bind_sysinfo(ctypes, libc):
    """Return fill(reading) that stores sysinfo(2)'s RAM and swap in KiB."""
    c_ulong = ctypes.c_ulong

    class Sysinfo(ctypes.Structure):
        _fields_ = [
            ('uptime', ctypes.c_long), ('loads', c_ulong * 3),
            ('totalram', c_ulong), ('freeram', c_ulong),
            ('sharedram', c_ulong), ('bufferram', c_ulong),
            ('totalswap', c_ulong), ('freeswap', c_ulong),
            ('procs', ctypes.c_ushort), ('pad', ctypes.c_ushort),
            ('totalhigh', c_ulong), ('freehigh', c_ulong),
            ('mem_unit', ctypes.c_uint),
            ('_f', ctypes.c_char * (20 - 2 * ctypes.sizeof(c_ulong)
                                    - ctypes.sizeof(ctypes.c_uint)))]

    info = Sysinfo()
    ref = ctypes.byref(info)
    sysinfo = libc.sysinfo

    def fill(reading):
        if sysinfo(ref) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        # mem_unit is the size of the units below, in bytes.
        unit = info.mem_unit or 1
        reading.mem_total_kib = info.totalram * unit // 1024
        reading.mem_free_kib = info.freeram * unit // 1024
        reading.swap_total_kib = info.totalswap * unit // 1024
        reading.swap_free_kib = info.freeswap * unit // 1024
    try:
        fill(Reading())
    except OSError:
        return None
    return fill


def _probe_pidfd(calls):
    """Return True when pidfd_open and pidfd_send_signal work here."""
    if calls.pidfd_open is None or calls.pidfd_send_signal is None:
        return False
    try:
        fd = calls.pidfd_open(os.getpid())
    except OSError:
        return False
    try:
        calls.pidfd_send_signal(fd, 0)   # signal 0: permission check only
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _probe_mrelease(calls):
    """Return True when process_mrelease(2) exists (EBADF on a bad fd)."""
    try:
        calls.process_mrelease(-1)
    except OSError as exc:
        return exc.errno != errno.ENOSYS
    return True


# ============================================================================
# Pure parsers: bytes or text in, values out; no I/O
# ============================================================================

def parse_meminfo(data):
    """Return /proc/meminfo (or a cgroup memory.stat) as {name: int}.

    meminfo values are in KiB (the " kB" suffix is dropped); memory.stat
    values are in bytes.  Lines that do not parse are skipped.
    """
    fields = {}
    for line in data.split(b'\n'):
        name, sep, rest = line.partition(b':')
        if not sep:   # memory.stat: "name value"
            name, sep, rest = line.partition(b' ')
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name.strip().decode('ascii', 'replace')] = int(parts[0])
    return fields


def available_kib(meminfo):
    """Return MemAvailable in KiB, estimated on kernels older than 3.14."""
    if 'MemAvailable' in meminfo:
        return meminfo['MemAvailable']
    get = meminfo.get
    return max(0, get('MemFree', 0) + get('Cached', 0) + get('Buffers', 0)
               - get('Shmem', 0))


def parse_psi(data):
    """Return (some_avg10, full_avg10) from a PSI file, None for what is absent."""
    some = full = None
    for line in data.split(b'\n'):
        kind, _, rest = line.partition(b' ')
        for item in rest.split():
            if item.startswith(b'avg10='):
                try:
                    value = float(item[6:])
                except ValueError:
                    break
                if kind == b'some':
                    some = value
                elif kind == b'full':
                    full = value
                break
    return some, full


def parse_zoneinfo_reserve_kib(data, page_kib=4):
    """Return the kernel's totalreserve_pages in KiB, from /proc/zoneinfo.

    MemAvailable = MemFree - totalreserve + (part of the page cache and
    reclaimable slab), so MemFree - totalreserve is a lower bound of
    MemAvailable that sysinfo(2) gives at a fraction of the cost.  The
    reserve per zone is its high watermark plus its largest lowmem
    protection, capped at the zone's managed pages (calculate_totalreserve_pages).
    """
    total = 0
    zone = None
    for line in data.split(b'\n'):
        words = line.split()
        if not words:
            continue
        if words[0] == b'Node':
            if zone:
                total += min(zone['high'] + zone['protect'], zone['managed'])
            zone = {'high': 0, 'protect': 0, 'managed': 1 << 62}
        elif zone is None:
            continue
        elif words[0] == b'high' and len(words) == 2 and words[1].isdigit():
            zone['high'] = int(words[1])
        elif words[0] == b'managed' and len(words) == 2:
            zone['managed'] = int(words[1])
        elif words[0] == b'protection:':
            numbers = [int(w) for w in line.partition(b'(')[2].replace(
                b')', b'').replace(b',', b' ').split() if w.isdigit()]
            zone['protect'] = max(numbers or [0])
    if zone:
        total += min(zone['high'] + zone['protect'], zone['managed'])
    return total * page_kib


class ProcStat(object):
    """The fields of /proc/PID/stat that bustd uses."""
    __slots__ = ('pid', 'name', 'state', 'ppid', 'pgrp', 'session', 'flags',
                 'starttime', 'rss_pages')


def parse_stat(data):
    """Return a ProcStat from /proc/PID/stat bytes, or None if malformed.

    The name (comm) sits between the first '(' and the LAST ')': it may
    itself contain spaces, parentheses and newlines ("a) R 1 (b").
    """
    open_paren = data.find(b'(')
    close_paren = data.rfind(b')')
    if open_paren < 0 or close_paren < open_paren:
        return None
    fields = data[close_paren + 2:].split()
    if len(fields) < 22:
        return None
    try:
        stat = ProcStat()
        stat.pid = int(data[:open_paren])
        stat.name = data[open_paren + 1:close_paren].decode('utf-8', 'replace')
        stat.state = fields[0].decode('ascii', 'replace')
        stat.ppid = int(fields[1])
        stat.pgrp = int(fields[2])
        stat.session = int(fields[3])
        stat.flags = int(fields[6])
        stat.starttime = int(fields[19])    # field 22: clock ticks after boot
        stat.rss_pages = int(fields[21])    # field 24
    except ValueError:
        return None
    return stat


def parse_cap_eff(status_text):
    """Return the effective capability mask from /proc/PID/status text (0 if absent)."""
    for line in status_text.split('\n'):
        if line.startswith('CapEff:'):
            try:
                return int(line.split()[1], 16)
            except (IndexError, ValueError):
                return 0
    return 0


SIZE_UNITS_KIB = {'': 1, 'k': 1, 'm': 1024, 'g': 1024 ** 2, 't': 1024 ** 3}


def parse_size_kib(text):
    """Return a size in KiB: '512M', '1G', '1.5g', '512MiB'; plain numbers are KiB."""
    value = text.strip().lower()
    for suffix in ('ib', 'b'):
        if value.endswith(suffix) and value[:-len(suffix)][-1:] in 'kmgt':
            value = value[:-len(suffix)]
            break
    unit = value[-1:] if value[-1:] in 'kmgt' else ''
    number = value[:-1] if unit else value
    try:
        size = float(number)
    except ValueError:
        raise ValueError('%r is not a size; give KiB or a number with K, M, G or T '
                         '(e.g. 512M)' % text)
    if not 0 <= size < 1e18:     # also rejects nan and inf
        raise ValueError('%r is not a size bustd can use; give a size like 512M' % text)
    return int(size * SIZE_UNITS_KIB[unit])


def parse_percent(text):
    """Return a float percentage from 0 to 100, or raise ValueError."""
    try:
        value = float(text.strip().rstrip('%'))
    except ValueError:
        raise ValueError('%r is not a number; give a percentage such as 10' % text)
    if not 0 <= value <= 100:
        raise ValueError('%s is not between 0 and 100' % text)
    return value


def parse_pair(text, parse_one):
    """Return (term, kill) from 'TERM[,KILL]'; KILL defaults to TERM/2 (earlyoom's rule)."""
    first, sep, second = text.partition(',')
    term = parse_one(first)
    kill = parse_one(second) if sep else term / 2
    if kill > term:
        raise ValueError('the SIGKILL level %s is above the SIGTERM level %s; '
                         'give TERM,KILL with KILL <= TERM (e.g. 10,5)'
                         % (second, first))
    return term, kill


def printable(text, limit=200):
    """Return text safe for one log line: control characters escaped, truncated."""
    if len(text) > limit:
        text = text[:limit] + '...'
    if text.isprintable():
        return text
    return ''.join(c if c.isprintable() else '\\x%02x' % ord(c) for c in text)


def format_kib(kib):
    """Return a KiB count as a short human size: '512 KiB', '3.1 GiB'."""
    for unit in ('KiB', 'MiB', 'GiB'):
        if abs(kib) < 1024:
            return ('%d %s' if unit == 'KiB' else '%.1f %s') % (kib, unit)
        kib /= 1024.0
    return '%.1f TiB' % kib


def percent_of(part, whole):
    """Return part as a percentage of whole (0 when whole is 0)."""
    return part * 100.0 / whole if whole else 0.0


# ============================================================================
# Kernel readers: every path under one injectable root (/proc, /sys)
# ============================================================================

def read_file(path, size=65536):
    """Return up to `size` bytes of a (small, kernel) file, or None if unreadable.

    os.open/os.read avoid the io module's buffer objects: this runs for
    every process of every scan.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while size > 0:
            chunk = os.read(fd, min(size, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            size -= len(chunk)
        return b''.join(chunks)
    except OSError:   # ESRCH: the process exited between open and read
        return None
    finally:
        os.close(fd)


def read_small(path, size=4096):
    """Return a small kernel file (stat, oom_score, PSI) with ONE read, or None.

    The kernel renders these files whole on the first read, so the loop of
    read_file (and its second, empty read) is not needed: this runs for
    every process of a victim scan.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, size)
    except OSError:   # ESRCH: the process exited between open and read
        return None
    finally:
        os.close(fd)


def read_int(path):
    """Return the integer in a one-number file, or None."""
    data = read_small(path, 64)
    try:
        return int(data)
    except (TypeError, ValueError):
        return None


class Reading(object):
    """One memory reading, in KiB; filled in place, so polling allocates little.

    `exact` is False when mem_available_kib is only sysinfo's cheap lower
    bound (MemFree - reserve); psi_* are None when unread or unavailable.
    """
    __slots__ = ('mem_total_kib', 'mem_free_kib', 'mem_available_kib',
                 'swap_total_kib', 'swap_free_kib', 'psi_some_avg10',
                 'psi_full_avg10', 'exact')

    def __init__(self):
        self.mem_total_kib = self.mem_free_kib = self.mem_available_kib = 0
        self.swap_total_kib = self.swap_free_kib = 0
        self.psi_some_avg10 = self.psi_full_avg10 = None
        self.exact = False


class EnvironmentProblem(Exception):
    """The machine cannot be watched (exit status 1); the message says why and what to do."""


def check_pid_namespace(proc):
    """Raise EnvironmentProblem if `proc` numbers processes differently from kill(2).

    A host's /proc mounted in a container (--proc) lists host pids, which
    pidfd_open and kill would take as the container's: another process, or
    bustd itself.  A tree without "self" (a test's) is taken as it is.
    """
    try:
        seen = os.readlink(proc + '/self')
    except OSError:
        return
    if seen != str(os.getpid()):
        raise EnvironmentProblem(
            '%s/self is pid %s but bustd is pid %d: %s belongs to another PID namespace; '
            'run bustd in the namespace of the processes it may kill (e.g. --pid=host)'
            % (proc, seen, os.getpid(), proc))


class MachineSensor(object):
    """Reads the whole machine's memory: sysinfo(2), /proc/meminfo, /proc/pressure/memory."""

    kind = 'machine'

    def __init__(self, proc='/proc', calls=None, log=None):
        self.proc = proc
        self.meminfo_path = proc + '/meminfo'
        self.psi_path = proc + '/pressure/memory'
        self.log = log
        # sysinfo describes the running kernel, which is what /proc describes
        # only when it is the real /proc (not a test's tree or a host's copy).
        self.sysinfo = calls.sysinfo if calls and proc == '/proc' else None
        self.reserve_kib = None
        self.next_reserve = 0.0
        self.uses_sysinfo = False
        self.has_mem_available = True
        self.has_psi = False

    def check(self):
        """Validate the sources once; return warnings; raise EnvironmentProblem."""
        check_pid_namespace(self.proc)
        data = read_file(self.meminfo_path)
        if data is None:
            raise EnvironmentProblem(
                'cannot read %s: is /proc mounted? (or point --proc at it)'
                % self.meminfo_path)
        fields = parse_meminfo(data)
        if 'MemTotal' not in fields:
            raise EnvironmentProblem('%s has no MemTotal line: not a Linux meminfo'
                                     % self.meminfo_path)
        warnings = []
        self.has_mem_available = 'MemAvailable' in fields
        if not self.has_mem_available:
            warnings.append('no MemAvailable in %s (kernel < 3.14): estimating it as '
                            'MemFree + Cached + Buffers - Shmem' % self.meminfo_path)
        self.has_psi = parse_psi(read_file(self.psi_path) or b'')[0] is not None
        if not self.has_psi:
            warnings.append('no PSI in %s (kernel < 4.20 or psi=0): the pressure rule '
                            'is off' % self.psi_path)
        if self.sysinfo is not None:
            self.read_reserve()
        # Polls start with the cheap sysinfo(2) reading only with both parts.
        self.uses_sysinfo = self.sysinfo is not None and self.reserve_kib is not None
        return warnings

    def read_reserve(self):
        """Set reserve_kib from /proc/zoneinfo (None if unreadable); again in a minute."""
        self.next_reserve = time.monotonic() + 60
        zoneinfo = read_file(self.proc + '/zoneinfo', 1 << 20)
        if zoneinfo:
            page_kib = os.sysconf('SC_PAGE_SIZE') // 1024
            # Not doubled any more: the poll schedule plans with this bound, and
            # a doubled reserve (155 of 954 MiB on a 1 GiB box) halved every
            # idle sleep.  MemAvailable subtracts totalreserve_pages, set from
            # the high watermarks when they are set up (boot, sysctl writes);
            # zoneinfo's "high" adds any current boost, so this is no smaller.
            self.reserve_kib = parse_zoneinfo_reserve_kib(zoneinfo, page_kib)

    def describe(self):
        """Return what the readings come from, for the start-up lines."""
        if self.uses_sysinfo:
            fast = 'sysinfo(2), then %s near a threshold' % self.meminfo_path
        else:
            fast = '%s on every poll' % self.meminfo_path
        return 'the whole machine (%s)' % fast

    def read(self, reading, th):
        """Fill `reading`; exact only when the cheap bound is near th.trigger_kib."""
        if self.uses_sysinfo:
            self.sysinfo(reading)
            if reading.mem_free_kib - self.reserve_kib > th.trigger_kib \
                    and time.monotonic() >= self.next_reserve:
                self.read_reserve()    # vm.min_free_kbytes may have been raised since
            lower = reading.mem_free_kib - self.reserve_kib
            if lower > th.trigger_kib:
                reading.mem_available_kib = lower
                reading.exact = False
                reading.psi_some_avg10 = reading.psi_full_avg10 = None
                return reading
        return self.read_exact(reading, th)

    def read_exact(self, reading, th=None, with_psi=True):
        """Fill `reading` from /proc/meminfo (and PSI when the rule may apply)."""
        data = read_file(self.meminfo_path)
        fields = parse_meminfo(data) if data else {}
        if 'MemTotal' in fields:
            reading.mem_total_kib = fields['MemTotal']
            reading.mem_free_kib = fields.get('MemFree', 0)
            reading.mem_available_kib = available_kib(fields)
            reading.swap_total_kib = fields.get('SwapTotal', 0)
            reading.swap_free_kib = fields.get('SwapFree', 0)
            reading.exact = True
        else:   # unreadable for a moment: keep the last figures, act on nothing new
            reading.exact = False
        if with_psi:
            self.read_psi(reading, th)
        return reading

    def read_psi(self, reading, th):
        """Fill reading.psi_* when PSI exists and the PSI rule could apply."""
        reading.psi_some_avg10 = reading.psi_full_avg10 = None
        if self.has_psi and (th is None or reading.mem_available_kib <= th.psi_mem_max_kib):
            reading.psi_some_avg10, reading.psi_full_avg10 = parse_psi(
                read_small(self.psi_path, 512) or b'')

    def member_pids(self):
        """Return the set of pids that may be killed (None: every process)."""
        return None

    def threshold_event_fd(self, calls, th):
        """Return an fd that polls readable when usage crosses a level (None here)."""
        return None


def parse_mountinfo_cgroups(text):
    """Return {'v2': (mountpoint, root), 'v1': (mountpoint, root)} of the memory hierarchies.

    Fields: id parent dev root mountpoint options ... - fstype source super_options.
    The v1 entry is the cgroup mount whose super options include "memory".
    """
    found = {}
    for line in text.split('\n'):
        left, sep, right = line.partition(' - ')
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        root, mountpoint = fields[3], fields[4].replace('\\040', ' ')
        if tail[0] == 'cgroup2':
            found.setdefault('v2', (mountpoint, root))
        elif tail[0] == 'cgroup' and 'memory' in tail[2].split(','):
            found.setdefault('v1', (mountpoint, root))
    return found


def parse_proc_cgroup(text):
    """Return {'v2': path, 'v1': path} of a process's memory cgroups (/proc/PID/cgroup)."""
    found = {}
    for line in text.split('\n'):
        parts = line.split(':', 2)
        if len(parts) != 3:
            continue
        if parts[0] == '0' and parts[1] == '':
            found['v2'] = parts[2]
        elif 'memory' in parts[1].split(','):
            found['v1'] = parts[2]
    return found


def cgroup_version(path):
    """Return 2 or 1 if path is a cgroup directory with the memory controller, else None."""
    if os.path.isfile(path + '/memory.current') or os.path.isfile(path + '/memory.max'):
        return 2
    if os.path.isfile(path + '/memory.usage_in_bytes'):
        return 1
    return None


def resolve_cgroup(spec, proc='/proc', sys_fs='/sys'):
    """Return (path, version) of the cgroup to watch, or raise ValueError saying why.

    spec is 'auto' (our own memory cgroup: the container case), a directory
    (/sys/fs/cgroup/system.slice/foo.service) or a path inside the memory
    hierarchy (system.slice/foo.service).
    """
    mounts = parse_mountinfo_cgroups(
        (read_file(proc + '/self/mountinfo', 1 << 20) or b'').decode('utf-8', 'replace'))
    if spec == 'auto':
        own = parse_proc_cgroup((read_file(proc + '/self/cgroup') or b'').decode(
            'utf-8', 'replace'))
        for key in ('v2', 'v1'):
            if key in own and key in mounts:
                mountpoint, root = mounts[key]
                inner = own[key]
                if root != '/' and inner.startswith(root):
                    inner = inner[len(root):]
                path = os.path.normpath(mountpoint + '/' + inner.lstrip('/'))
                if cgroup_version(path):
                    return path, cgroup_version(path)
        raise ValueError("found no memory cgroup of bustd's own in %s/self/cgroup; give "
                         '--cgroup PATH' % proc)
    candidates = [spec]
    if not spec.startswith('/') or not os.path.isdir(spec):
        for key in ('v2', 'v1'):
            if key in mounts:
                candidates.append(mounts[key][0] + '/' + spec.lstrip('/'))
        candidates += [sys_fs + '/fs/cgroup/' + spec.lstrip('/'),
                       sys_fs + '/fs/cgroup/memory/' + spec.lstrip('/')]
    for path in candidates:
        if os.path.isdir(path):
            version = cgroup_version(path)
            if version:
                return os.path.abspath(path), version
            raise ValueError('%s is not a cgroup with the memory controller (no '
                             'memory.current or memory.usage_in_bytes); give a directory '
                             'under %s/fs/cgroup' % (path, sys_fs))
    raise ValueError('%s: no such cgroup directory; give a directory under %s/fs/cgroup, '
                     'or auto' % (spec, sys_fs))


class CgroupSensor(object):
    """Reads one cgroup's memory (v1 or v2): usage against its limit, minus file cache.

    "Available" is limit - usage + reclaimable page cache (active_file +
    inactive_file from memory.stat), the cgroup's analogue of MemAvailable.
    The cheap reading is limit - usage (it counts the cache as used, so it
    is a lower bound).  Without a limit the machine's figures are used.
    """

    kind = 'cgroup'

    def __init__(self, path, version, machine, log):
        self.path = path
        self.version = version
        self.machine = machine
        self.log = log
        self.limit_kib = None
        self.levels = []
        self.swap_limit_kib = None
        self.next_refresh = 0.0
        self.limits_read = False
        self.host = Reading()
        v2 = version == 2
        self.usage_name = 'memory.current' if v2 else 'memory.usage_in_bytes'
        self.limit_name = 'memory.max' if v2 else 'memory.limit_in_bytes'
        self.usage_path = path + '/' + self.usage_name
        self.psi_path = path + '/memory.pressure' if v2 else None
        self.has_psi = False
        self.uses_sysinfo = False
        self.has_mem_available = True

    def check(self):
        """Validate the cgroup's files; return warnings; raise EnvironmentProblem."""
        warnings = [w for w in self.machine.check() if 'PSI' not in w]
        self.has_mem_available = self.machine.has_mem_available
        if read_int(self.usage_path) is None:
            raise EnvironmentProblem('cannot read %s: is the memory controller enabled '
                                     'for this cgroup?' % self.usage_path)
        if self.psi_path is not None:
            self.has_psi = parse_psi(read_file(self.psi_path) or b'')[0] is not None
        if not self.has_psi:
            warnings.append('no memory.pressure for %s (%s): the PSI rule is off' % (
                self.path, 'cgroup v1' if self.version == 1 else 'kernel without PSI'))
        self.refresh_limits()
        if self.limit_kib is None:
            warnings.append('cgroup %s has no memory limit: using the machine\'s figures; '
                            'only its processes may be killed' % self.path)
        return warnings

    def files(self):
        """Return the files read, for the start-up lines."""
        if self.version == 2:
            names = ('memory.current', 'memory.max', 'memory.stat', 'memory.swap.current',
                     'memory.swap.max', 'memory.pressure')
        else:
            names = ('memory.usage_in_bytes', 'memory.limit_in_bytes', 'memory.stat',
                     'memory.memsw.usage_in_bytes', 'memory.memsw.limit_in_bytes')
        return ', '.join(names)

    def describe(self):
        return 'cgroup v%d %s (%s)' % (self.version, self.path, self.files())

    def refresh_limits(self, now=None):
        """Re-read which cgroups (this one and its ancestors) limit memory, and the limits.

        At most once per LIMIT_REFRESH_S: limits change rarely (systemctl
        set-property), and readings come every 10 ms near a threshold.
        Sets self.levels to [(path, limit_kib)] and self.limit_kib to the
        smallest limit (None: no limit below the machine's RAM).
        """
        now = time.monotonic() if now is None else now
        if now < self.next_refresh:
            return
        self.next_refresh = now + LIMIT_REFRESH_S
        self.machine.read_exact(self.host, with_psi=False)   # the host's RAM and swap
        levels = []
        path = self.path
        while True:
            limit = read_cgroup_limit(path, self.limit_name)
            if limit is None and not os.path.exists(path + '/' + self.limit_name):
                break            # above the hierarchy's root
            if limit is not None and limit // 1024 < self.host.mem_total_kib:
                levels.append((path, limit // 1024))
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
        limit_kib = min(kib for _, kib in levels) if levels else None
        if limit_kib != self.limit_kib and self.limits_read:
            self.log.info('cgroup %s: memory limit now %s' % (
                self.path, "none (using the machine's figures)" if limit_kib is None
                else format_kib(limit_kib)))
        self.limits_read = True
        self.levels = levels
        self.limit_kib = limit_kib
        if self.version == 2:
            swap = _cgroup_v2_limit_bytes(self.path, 'memory.swap.max')
        else:
            memsw = read_cgroup_limit(self.path, 'memory.memsw.limit_in_bytes')
            mem = read_cgroup_limit(self.path, 'memory.limit_in_bytes')
            swap = None if memsw is None else max(0, memsw - (mem or memsw))
        swap_kib = self.host.swap_total_kib
        if swap is not None:
            swap_kib = min(swap_kib, swap // 1024)
        self.swap_limit_kib = swap_kib

    def read(self, reading, th):
        """Fill `reading`; exact only when limit - usage is near th.trigger_kib anywhere."""
        self.refresh_limits()
        if self.limit_kib is None:
            return self.machine.read(reading, th)
        lower = None
        for path, limit_kib in self.levels:
            usage = read_int(path + '/' + self.usage_name)
            if usage is None:
                return self.read_exact(reading, th)
            room = limit_kib - usage // 1024
            lower = room if lower is None else min(lower, room)
        if lower > th.trigger_kib:
            reading.mem_total_kib = self.limit_kib
            reading.mem_available_kib = lower
            reading.exact = False
            reading.psi_some_avg10 = reading.psi_full_avg10 = None
            return reading
        return self.read_exact(reading, th)

    def read_exact(self, reading, th=None):
        """Fill `reading` from usage, limit and page cache of every limiting cgroup, swap, PSI.

        Available memory is the least headroom of the limiting cgroups: a
        parent's limit is shared with this cgroup's siblings.
        """
        self.refresh_limits()
        if self.limit_kib is None:
            return self.machine.read_exact(reading, th)
        prefix = 'total_' if self.version == 1 else ''   # v1: hierarchical counters
        avail = free = None
        own_usage = None
        for path, limit_kib in self.levels:
            usage = read_int(path + '/' + self.usage_name)
            if usage is None:
                reading.exact = False
                return reading
            if path == self.path:
                own_usage = usage
            stat = parse_meminfo(read_file(path + '/memory.stat') or b'')
            cache_kib = (stat.get(prefix + 'active_file', 0) +
                         stat.get(prefix + 'inactive_file', 0)) // 1024
            room = max(0, limit_kib - usage // 1024)
            free = room if free is None else min(free, room)
            level_avail = min(limit_kib, room + cache_kib)
            avail = level_avail if avail is None else min(avail, level_avail)
        if own_usage is None:
            own_usage = read_int(self.usage_path) or 0
        reading.mem_total_kib = self.limit_kib
        reading.mem_free_kib = free
        reading.mem_available_kib = avail
        reading.swap_total_kib = self.swap_limit_kib
        reading.swap_free_kib = self._swap_free_kib(own_usage)
        reading.exact = True
        reading.psi_some_avg10 = reading.psi_full_avg10 = None
        if self.has_psi and (th is None or reading.mem_available_kib <= th.psi_mem_max_kib):
            reading.psi_some_avg10, reading.psi_full_avg10 = parse_psi(
                read_small(self.psi_path, 512) or b'')
        return reading

    def _swap_free_kib(self, usage):
        if not self.swap_limit_kib:
            return 0
        if self.version == 2:
            used = read_int(self.path + '/memory.swap.current')
        else:
            memsw = read_int(self.path + '/memory.memsw.usage_in_bytes')
            used = None if memsw is None else memsw - usage
        if used is None:   # no swap accounting: the host's free swap
            return self.host.swap_free_kib
        return max(0, min(self.swap_limit_kib - used // 1024, self.host.swap_free_kib))

    def member_pids(self):
        """Return the pids in the cgroup and its descendants."""
        pids = set()
        for directory, _, _ in os.walk(self.path):
            data = read_file(directory + '/cgroup.procs', 1 << 22) or b''
            pids.update(int(x) for x in data.split() if x.isdigit())
        return pids

    def threshold_event_fd(self, calls, th):
        """cgroup v1: return an eventfd the kernel signals when usage crosses a level.

        One eventfd, one threshold per decision level (where exact readings
        start, SIGTERM, SIGKILL).  The kernel checks thresholds every 128
        page charges, so the daemon wakes within ~512 KiB of a crossing
        instead of up to a poll later: at 2.5 GB/s a poll floor of 10 ms is
        25 MB, the whole SIGTERM band of a 256 MiB cgroup.
        """
        if self.version != 1 or calls.eventfd is None or not self.levels:
            return None
        try:
            efd = calls.eventfd()
        except OSError:
            return None
        try:
            # Every limiting cgroup (this one, or an ancestor shared with siblings).
            for path, limit_kib in self.levels:
                ufd = os.open(path + '/' + self.usage_name, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    control = os.open(path + '/cgroup.event_control', os.O_WRONLY)
                    try:
                        for kib in sorted(set((th.trigger_kib, th.mem_term_kib,
                                               th.mem_kill_kib))):
                            if 0 < kib < limit_kib:
                                os.write(control, ('%d %d %d' % (
                                    efd, ufd, (limit_kib - kib) * 1024)).encode())
                    finally:
                        os.close(control)
                finally:
                    os.close(ufd)
        except OSError:
            os.close(efd)
            return None
        return efd


def read_cgroup_limit(path, name):
    """Return a cgroup limit file's value in bytes, None for no limit ('max', v1's huge value)."""
    data = read_small(path + '/' + name, 64)
    value = (data or b'').strip()
    if not value.isdigit() or int(value) >= 1 << 62:   # v1 "unlimited": 0x7FFFFFFFFFFFF000
        return None
    return int(value)


def _cgroup_v2_limit_bytes(path, name):
    """Return the smallest `name` limit of path and its ancestors in bytes (None: max)."""
    limit = None
    while True:
        data = read_file(path + '/' + name, 64)
        if data is None:
            break
        value = data.strip()
        if value.isdigit():
            limit = int(value) if limit is None else min(limit, int(value))
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return limit


def available_cpus():
    """Return how many CPUs this process may run on (a hog may use as many)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def calibrate_fill_kib_s(size_kib=CALIBRATE_KIB, repeats=CALIBRATE_REPEATS,
                         clock=time.monotonic):
    """Return how fast (KiB/s) this process faults in fresh anonymous memory, or None.

    One byte per page, written by C (an mmap slice assignment), as a C hog
    does; the best of `repeats`, with 4 KiB pages and then with transparent
    huge pages where madvise exists.  Run before mlockall: the memory is
    returned at once.
    """
    import mmap
    page = mmap.PAGESIZE
    size = size_kib * 1024
    ones = b'\1' * (size // page)
    hugepage = getattr(mmap, 'MADV_HUGEPAGE', None)
    best = 0.0
    for advice in (None,) if hugepage is None else (None, hugepage):
        for _ in range(repeats):
            try:
                # Private: a shared mapping is shmem, slower and without THP.
                region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
            except (OSError, ValueError):
                return best or None
            try:
                if advice is not None:   # mmap.madvise: Python 3.8
                    getattr(region, 'madvise')(advice)
                start = clock()
                region[::page] = ones
                elapsed = clock() - start
            except (OSError, ValueError):
                elapsed = 0
            finally:
                region.close()
            if elapsed > 0:
                best = max(best, size_kib / elapsed)
    return best or None


# ============================================================================
# Policy (when): pure functions of a reading and the thresholds
# ============================================================================

class Thresholds(object):
    """The decision levels in KiB, derived from settings and the totals they apply to."""
    __slots__ = ('mem_total_kib', 'swap_total_kib', 'mem_term_kib', 'mem_kill_kib',
                 'swap_term_kib', 'swap_kill_kib', 'psi_avg10', 'psi_mem_max_kib',
                 'warn_kib', 'trigger_kib', 'clamped')


def compute_thresholds(settings, mem_total_kib, swap_total_kib):
    """Return Thresholds for these totals.

    Where both a percentage (-m/-s) and a size (-M/-S) are given, the lower
    level is used, as earlyoom does ("-m 10 -M 1G": 10 %, but at most 1 GiB).
    """
    th = Thresholds()
    th.mem_total_kib = mem_total_kib
    th.swap_total_kib = swap_total_kib
    th.mem_term_kib, th.mem_kill_kib = _levels_kib(
        settings.mem_percent, settings.mem_size_kib, mem_total_kib)
    # A SIGTERM level at or above the total would kill at once and forever
    # (say -M 2G against a cgroup limit lowered to 1G): use the defaults.
    th.clamped = mem_total_kib > 0 and th.mem_term_kib >= mem_total_kib
    if th.clamped:
        th.mem_term_kib, th.mem_kill_kib = _levels_kib(DEFAULT_MEM_PERCENT, None, mem_total_kib)
    th.swap_term_kib, th.swap_kill_kib = _levels_kib(
        settings.swap_percent, settings.swap_size_kib, swap_total_kib)
    th.psi_avg10 = settings.psi_avg10
    if settings.psi_avg10 is None:
        th.psi_mem_max_kib = -1
    else:
        th.psi_mem_max_kib = int(mem_total_kib * settings.psi_mem_max_percent / 100)
    th.warn_kib = -1
    if settings.warn_percent is not None:
        th.warn_kib = int(mem_total_kib * settings.warn_percent / 100)
    # Below this the cheap reading is not enough and an exact one is taken.
    th.trigger_kib = max(th.mem_term_kib, th.psi_mem_max_kib, th.warn_kib)
    return th


def check_levels(settings, th):
    """Raise UsageError for levels that make no sense against the totals they apply to."""
    if th.clamped:
        raise UsageError('argument -m/-M: the SIGTERM level is not below the %s of memory '
                         'there is: bustd would kill at once; give e.g. -m 10,5'
                         % format_kib(th.mem_total_kib))
    if th.warn_kib >= 0 and th.warn_kib <= th.mem_term_kib:
        raise UsageError('argument --warn: %g%% is not above the SIGTERM level %s (-m/-M); '
                         'give e.g. --warn %g' % (
                             settings.warn_percent, format_kib(th.mem_term_kib),
                             min(100, percent_of(th.mem_term_kib, th.mem_total_kib) + 5)))


def _levels_kib(percent_pair, size_pair, total_kib):
    """Return (term, kill) in KiB from a percent pair and an optional size pair."""
    term = int(total_kib * percent_pair[0] / 100)
    kill = int(total_kib * percent_pair[1] / 100)
    if size_pair is not None:
        term = min(term, int(size_pair[0]))
        kill = min(kill, int(size_pair[1]))
    return term, kill


def decide(reading, th):
    """Return the signal the reading calls for: 0, SIGTERM or SIGKILL.

    Memory rule: available memory AND free swap both at or below their
    levels (no swap counts as low).  PSI rule: "some" avg10 at or above
    th.psi_avg10 while available memory is at or below th.psi_mem_max_kib.
    """
    avail = reading.mem_available_kib
    no_swap = reading.swap_total_kib == 0
    if avail <= th.mem_kill_kib and (no_swap or reading.swap_free_kib <= th.swap_kill_kib):
        return signal.SIGKILL
    if avail <= th.mem_term_kib and (no_swap or reading.swap_free_kib <= th.swap_term_kib):
        return signal.SIGTERM
    psi = reading.psi_some_avg10
    if (th.psi_avg10 is not None and psi is not None and psi >= th.psi_avg10
            and avail <= th.psi_mem_max_kib):
        return signal.SIGTERM
    return 0


def describe_trigger(reading, th):
    """Return why decide() acted, as 'key=value' text for the kill log line."""
    total = reading.mem_total_kib
    text = 'mem_available=%s(%.1f%%) term_at=%.1f%% kill_at=%.1f%%' % (
        format_kib(reading.mem_available_kib).replace(' ', ''),
        percent_of(reading.mem_available_kib, total),
        percent_of(th.mem_term_kib, total), percent_of(th.mem_kill_kib, total))
    if reading.swap_total_kib:
        text += ' swap_free=%.1f%%' % percent_of(reading.swap_free_kib, reading.swap_total_kib)
    else:
        text += ' swap=none'
    if reading.psi_some_avg10 is not None:
        text += ' psi_some_avg10=%.2f' % reading.psi_some_avg10
    return text


class FillModel(object):
    """The fastest rate (KiB/s) at which memory may fill here: the schedule's worst case.

    base_kib_s comes from the start-up calibration (see FILL_SAFETY and the
    constants above); rate_kib_s is what the schedule uses: the base, or a
    faster fill seen in the readings during the last LEARNED_FORGET_S.
    """
    __slots__ = ('calibrated_kib_s', 'cpus', 'base_kib_s', 'rate_kib_s', 'learned_until_s')

    def __init__(self, calibrated_kib_s=None, cpus=1):
        self.calibrated_kib_s = calibrated_kib_s
        self.cpus = cpus
        if calibrated_kib_s:
            self.base_kib_s = min(FILL_CAP_KIB_S, max(
                FILL_FLOOR_KIB_S, FILL_SAFETY * calibrated_kib_s * max(1.0, cpus / 2.0)))
        else:   # not calibrated: the universal worst case
            self.base_kib_s = FILL_CAP_KIB_S
        self.rate_kib_s = self.base_kib_s
        self.learned_until_s = 0.0

    def learn(self, dropped_kib, elapsed_s, now_s):
        """Account for a drop of dropped_kib over elapsed_s seen at now_s; return rate_kib_s.

        A drop faster than the model sets the rate to FILL_SAFETY x that
        speed (no cap: the machine just proved it can), for LEARNED_FORGET_S.
        """
        if dropped_kib > 0 and elapsed_s > 0:
            seen_kib_s = FILL_SAFETY * dropped_kib / elapsed_s
            if seen_kib_s > self.rate_kib_s:
                self.rate_kib_s = seen_kib_s
                self.learned_until_s = now_s + LEARNED_FORGET_S
                return seen_kib_s
        if self.rate_kib_s != self.base_kib_s and now_s >= self.learned_until_s:
            self.rate_kib_s = self.base_kib_s
        return self.rate_kib_s

    def describe(self):
        """Return the model in words, for the start-up lines."""
        if not self.calibrated_kib_s:
            return 'worst-case fill %s/s (not calibrated)' % format_kib(self.base_kib_s)
        return ('worst-case fill %s/s (calibrated %s/s on one CPU, x%g safety, %d CPUs; '
                'floor %s/s, cap %s/s; raised by faster drops seen)' % (
                    format_kib(self.base_kib_s), format_kib(self.calibrated_kib_s),
                    FILL_SAFETY, self.cpus, format_kib(FILL_FLOOR_KIB_S),
                    format_kib(FILL_CAP_KIB_S)))


def sleep_time_s(reading, th, fill_kib_s, floor_s=POLL_FLOOR_S, ceiling_s=POLL_CEILING_S):
    """Return how long the headroom above the SIGTERM levels lasts at worst-case fill rates.

    fill_kib_s is the memory fill rate (FillModel.rate_kib_s).  Both memory
    and swap must fill before the memory rule fires, so the two times add up
    (earlyoom's model).  Clamped to [floor_s, ceiling_s].
    """
    seconds = max(0, reading.mem_available_kib - th.mem_term_kib) / fill_kib_s
    if reading.swap_total_kib:
        swap_headroom = max(0, reading.swap_free_kib - th.swap_term_kib)
        seconds += swap_headroom / float(SWAP_FILL_RATE_KIB_S)
    return min(max(seconds, floor_s), ceiling_s)


# ============================================================================
# Victim selection (whom)
# ============================================================================

class Process(object):
    """One process as the victim scan sees it.

    `never` is why the kernel-level rules exclude it (init, kernel thread,
    the daemon, exiting, oom_score_adj -1000), `protected` why the admin's
    rules do; `preference` is +1 (--prefer), -1 (--avoid) or 0, and
    `badness` is oom_score shifted by PREFER_ADJUST per preference step.
    """
    __slots__ = ('pid', 'name', 'state', 'ppid', 'pgrp', 'session', 'flags',
                 'starttime', 'rss_kib', 'uid', 'oom_score', 'oom_score_adj',
                 'cmdline', 'never', 'protected', 'preference', 'badness')

    def rank_key(self, sort_by_rss=False):
        """Return the sort key: higher is killed first; full ties go to the younger process."""
        if sort_by_rss:
            return (self.preference, self.rss_kib, self.oom_score, self.starttime, self.pid)
        return (self.badness, self.rss_kib, self.starttime, self.pid)


def iter_pids(proc):
    """Yield the numeric entries of a /proc tree; an unreadable /proc yields nothing."""
    try:
        names = os.listdir(proc)
    except OSError:
        return
    for name in names:
        if name.isdigit():
            yield int(name)


def read_process(proc, pid, page_kib, score=None):
    """Return a Process for pid, or None if it vanished or is unreadable (hidepid).

    `score` is its oom_score when the caller has just read it.
    """
    base = '%s/%d' % (proc, pid)
    stat = parse_stat(read_small(base + '/stat') or b'')
    if stat is None or is_kernel_thread(stat):
        return None     # vanished, unreadable, or a kernel thread: never a candidate
    if score is None:
        score = read_int(base + '/oom_score')
    adj = read_int(base + '/oom_score_adj')
    if score is None or adj is None:
        return None
    try:
        uid = os.stat(base).st_uid
    except OSError:
        return None
    p = Process()
    p.pid = pid
    p.name = stat.name
    p.state = stat.state
    p.ppid = stat.ppid
    p.pgrp = stat.pgrp
    p.session = stat.session
    p.flags = stat.flags
    p.starttime = stat.starttime
    p.rss_kib = stat.rss_pages * page_kib
    p.uid = uid
    p.oom_score = score
    p.oom_score_adj = adj
    p.cmdline = None
    p.never = never_reason(p, os.getpid())
    p.protected = None
    p.preference = 0
    p.badness = score
    return p


def is_kernel_thread(p):
    """Return True for kthreadd and its children (they have no memory to free)."""
    return bool(p.flags & PF_KTHREAD) or p.pid == 2 or p.ppid == 2


def never_reason(p, self_pid):
    """Return why p may never be killed whatever the settings, or None."""
    if p.pid == 1:
        return 'init'
    if p.pid == self_pid:
        return 'bustd itself'
    if is_kernel_thread(p):
        return 'kernel thread'
    if p.state in ('Z', 'X', 'x') or p.flags & PF_EXITING:
        return 'exiting'
    if p.oom_score_adj == -1000:
        return 'oom_score_adj -1000'
    return None


def read_cmdline(proc, pid, limit=4096):
    """Return /proc/PID/cmdline with NULs as spaces ('' for kernel threads or on error)."""
    data = read_file('%s/%d/cmdline' % (proc, pid), limit) or b''
    return data.rstrip(b'\0').replace(b'\0', b' ').decode('utf-8', 'replace')


def glob_match(pattern, text):
    """Return True if text matches the shell glob (*, ?, [a-z], [!x]) as a whole.

    A tiny matcher instead of fnmatch, which would load the re module into
    every daemon for the default protected list.
    """
    p = t = 0
    star_p = star_t = -1
    while t < len(text):
        if p < len(pattern) and pattern[p] == '*':
            star_p, star_t = p, t
            p += 1
            continue
        if p < len(pattern):
            step = _glob_step(pattern, p, text[t])
            if step:
                p += step
                t += 1
                continue
        if star_p < 0:
            return False
        star_t += 1
        p, t = star_p + 1, star_t
    return pattern[p:].strip('*') == ''


def _glob_step(pattern, p, char):
    """Return how many pattern characters match `char` at p (0: no match)."""
    head = pattern[p]
    if head == '?':
        return 1
    if head == '[':
        end = pattern.find(']', p + 2)
        if end > 0:
            body = pattern[p + 1:end]
            negate = body[:1] in ('!', '^')
            if negate:
                body = body[1:]
            hit = False
            i = 0
            while i < len(body):
                if i + 2 < len(body) and body[i + 1] == '-':
                    hit = hit or body[i] <= char <= body[i + 2]
                    i += 3
                else:
                    hit = hit or body[i] == char
                    i += 1
            return end - p + 1 if hit != negate else 0
    return 1 if head == char else 0


class Policy(object):
    """Who may be killed and who first: the admin's lists and preferences."""

    def __init__(self, settings, only_uid=None):
        self.proc = settings.proc
        self.globs = list(settings.unkillables)
        self.default_globs = DEFAULT_UNKILLABLES if settings.default_unkillables else ()
        self.ignore = settings.ignore_re
        self.prefer = settings.prefer_re
        self.avoid = settings.avoid_re
        self.ignore_root = settings.ignore_root_user
        self.match_cmdline = settings.match == 'cmdline'
        self.sort_by_rss = settings.sort_by_rss
        self.only_uid = only_uid   # not root: only our own processes can be signalled

    def match_text(self, p):
        """Return what the admin's patterns are matched against."""
        if self.match_cmdline:
            if p.cmdline is None:
                p.cmdline = read_cmdline(self.proc, p.pid)
            return p.cmdline or p.name
        return p.name

    def classify(self, p):
        """Set p.protected, p.preference and p.badness from the settings."""
        text = self.match_text(p)
        for pattern in self.globs:
            if glob_match(pattern, text):
                p.protected = '-u %s' % pattern
                break
        else:
            if self.ignore is not None and self.ignore.search(text):
                p.protected = '--ignore'
            elif self.ignore_root and p.uid == 0:
                p.protected = '--ignore-root-user'
            elif self.only_uid is not None and p.uid != self.only_uid:
                p.protected = 'other user (not root)'
            else:
                for pattern in self.default_globs:   # designed for names, not cmdlines
                    if glob_match(pattern, p.name):
                        p.protected = 'default: %s' % pattern
                        break
        if self.prefer is not None and self.prefer.search(text):
            p.preference += 1
        if self.avoid is not None and self.avoid.search(text):
            p.preference -= 1
        p.badness = p.oom_score + PREFER_ADJUST * p.preference


def scan_processes(proc, policy, member_pids=None):
    """Return every user-space process (classified), in /proc order.

    Kernel threads are left out; processes that may never be killed are
    kept (with `never` set) so --list and the logs can show them.  A process
    that vanishes mid-scan is simply missing.
    """
    page_kib = os.sysconf('SC_PAGE_SIZE') // 1024
    found = []
    pids = iter_pids(proc) if member_pids is None else sorted(member_pids)
    for pid in pids:
        p = read_process(proc, pid, page_kib)
        if p is None:
            continue
        policy.classify(p)
        found.append(p)
    return found


def find_victim(proc, policy, member_pids=None):
    """Return (victim or None, protected processes that outranked it), reading little.

    The same answer as pick_victim(scan_processes(...)), for the kill path
    where every millisecond counts: only oom_score is read for every
    process; whole records are read in descending order of the best rank
    each could reach (oom_score, +PREFER_ADJUST with --prefer), until no
    process left can outrank the best found.  --sort-by-rss scans everything.
    """
    if policy.sort_by_rss:
        return pick_victim(scan_processes(proc, policy, member_pids), True)
    bonus = PREFER_ADJUST if policy.prefer is not None else 0
    scores = []
    for pid in (iter_pids(proc) if member_pids is None else member_pids):
        score = read_int('%s/%d/oom_score' % (proc, pid))
        if score is not None:
            scores.append((score, pid))
    scores.sort(reverse=True)
    page_kib = os.sysconf('SC_PAGE_SIZE') // 1024
    best, passed_over = None, []
    for score, pid in scores:
        if best is not None and score + bonus < best.badness:
            break        # nothing from here on can outrank (or tie with) the best
        p = read_process(proc, pid, page_kib, score)
        if p is None or p.never:
            continue
        policy.classify(p)
        if p.protected:
            passed_over.append(p)
        elif best is None or p.rank_key() > best.rank_key():
            best = p
    skipped = [p for p in passed_over if best is None or p.rank_key() > best.rank_key()]
    skipped.sort(key=lambda p: p.rank_key(), reverse=True)
    return best, skipped


def rank_processes(processes, sort_by_rss=False):
    """Return the processes sorted so that the first is killed first."""
    return sorted(processes, key=lambda p: p.rank_key(sort_by_rss), reverse=True)


def pick_victim(processes, sort_by_rss=False):
    """Return (victim or None, protected processes that outranked it)."""
    skipped = []
    for p in rank_processes(processes, sort_by_rss):
        if p.never:
            continue
        if p.protected:
            skipped.append(p)
            continue
        return p, skipped
    return None, skipped


def describe_victim(p, skipped, sort_by_rss):
    """Return one line saying why p was chosen and whom that passed over."""
    if sort_by_rss:
        why = 'largest RSS (%s)' % format_kib(p.rss_kib)
    else:
        why = 'highest oom_score %d' % p.oom_score
    if p.preference:
        why += ' (%s: %+d)' % ('--prefer' if p.preference > 0 else '--avoid',
                               PREFER_ADJUST * p.preference)
    if skipped:
        why += '; skipped protected: ' + ', '.join(
            '%d %s (%s)' % (s.pid, printable(s.name), s.protected) for s in skipped[:10])
    return why


def format_table(processes, sort_by_rss, user_name, limit=None):
    """Return the --list table: the ranking, the would-be victim marked."""
    victim, _ = pick_victim(processes, sort_by_rss)
    lines = ['%7s %-10s %-16s %9s %5s %10s  %s' % (
        'PID', 'USER', 'NAME', 'OOM_SCORE', 'ADJ', 'RSS', 'MARK')]
    ranked = rank_processes(processes, sort_by_rss)
    for p in ranked[:limit] if limit else ranked:
        marks = []
        if p is victim:
            marks.append('<- victim')
        if p.never:
            marks.append('never: ' + p.never)
        elif p.protected:
            marks.append('protected: ' + p.protected)
        if p.preference > 0:
            marks.append('preferred')
        elif p.preference < 0:
            marks.append('avoided')
        lines.append('%7d %-10s %-16s %9d %5d %10s  %s' % (
            p.pid, user_name(p.uid)[:10], printable(p.name, 16), p.oom_score,
            p.oom_score_adj, format_kib(p.rss_kib), ', '.join(marks)))
    if victim is None:
        lines.append('no process may be killed')
    return '\n'.join(lines)


def user_name_function():
    """Return uid -> user name, from the passwd database when there is one."""
    try:
        import pwd
    except ImportError:
        return str
    cache = {}

    def name(uid):
        if uid not in cache:
            try:
                cache[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                cache[uid] = str(uid)
        return cache[uid]
    return name


# ============================================================================
# Killer (how): pidfds, escalation, waiting
# ============================================================================

def same_process(proc, pid, starttime):
    """Return True if pid is still the live process that started at `starttime`."""
    stat = parse_stat(read_small('%s/%d/stat' % (proc, pid)) or b'')
    return (stat is not None and stat.starttime == starttime
            and stat.state not in ('Z', 'X', 'x'))


def group_refusal(members, self_pid, self_pgrp, self_sid, member_pids=None):
    """Return why a process group may not be signalled as a whole, or None."""
    for m in members:
        if m.pid == 1:
            return 'it contains PID 1'
        if m.pid == self_pid or m.pgrp == self_pgrp:
            return 'it contains bustd itself'
        if m.session == self_sid:
            return "it is in bustd's own session"
        if m.protected or m.never:
            return 'it contains %d %s (%s)' % (m.pid, printable(m.name),
                                                m.protected or m.never)
        if member_pids is not None and m.pid not in member_pids:
            return 'it reaches outside the watched cgroup (pid %d)' % m.pid
    return None


class Target(object):
    """The victim, or its whole process group, held so that no recycled PID is hit.

    With pidfds each member is opened and then checked against the start
    time seen by the scan: if it matches, the fd is that process for good.
    Without pidfds every signal is preceded by the same start-time check.
    """

    def __init__(self, victim, calls, proc, members=None, pgrp=None):
        self.victim = victim
        self.calls = calls
        self.proc = proc
        self.members = members or [victim]
        self.pgrp = pgrp
        self.fds = {}
        self.error = None    # errno of the last failed signal

    def open(self):
        """Take hold of the members; return False if none is still the scanned process."""
        alive = 0
        for m in self.members:
            if self.calls.pidfd_open is not None:
                try:
                    fd = self.calls.pidfd_open(m.pid)
                except OSError:
                    continue
                if not same_process(self.proc, m.pid, m.starttime):
                    os.close(fd)
                    continue
                self.fds[m.pid] = fd
            elif not same_process(self.proc, m.pid, m.starttime):
                continue
            alive += 1
        return alive > 0

    def is_alive(self, m):
        """Return True while member m has not exited."""
        fd = self.fds.get(m.pid)
        if fd is not None:
            return not _fd_readable(fd, 0)
        if self.calls.pidfd_open is not None:
            return False     # could not be opened: it was gone already
        return same_process(self.proc, m.pid, m.starttime)

    def alive_count(self):
        """Return how many members are still alive."""
        return sum(1 for m in self.members if self.is_alive(m))

    def send(self, sig):
        """Signal the target; return False if nothing was left to signal."""
        if self.pgrp is not None:
            # A process group id is not reused while any member lives, and
            # we hold pidfds on the members: one alive means the group is ours.
            if not self.alive_count():
                self.error = errno.ESRCH
                return False
            try:
                os.killpg(self.pgrp, sig)
            except OSError as exc:
                self.error = exc.errno
                return False
        else:
            m = self.victim
            fd = self.fds.get(m.pid)
            try:
                if fd is not None:
                    self.calls.pidfd_send_signal(fd, sig)
                elif self.calls.pidfd_open is None and same_process(self.proc, m.pid, m.starttime):
                    os.kill(m.pid, sig)
                else:
                    self.error = errno.ESRCH
                    return False
            except OSError as exc:   # ESRCH: gone; EPERM: not ours, or an LSM said no
                self.error = exc.errno
                return False
        return True

    def release_memory(self):
        """After SIGKILL: reap the address spaces now (process_mrelease, Linux 5.15)."""
        if self.calls.process_mrelease is None:
            return
        for fd in self.fds.values():
            try:
                self.calls.process_mrelease(fd)
            except OSError:
                pass   # EINVAL/ESRCH: already released or gone

    def wait(self, timeout_s):
        """Wait up to timeout_s for every member to exit; return True when all have."""
        deadline = time.monotonic() + timeout_s
        while True:
            alive = [m for m in self.members if self.is_alive(m)]
            if not alive:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            fds = [self.fds[m.pid] for m in alive if m.pid in self.fds]
            if fds:
                _fds_wait(fds, min(left, KILL_POLL_S))
            else:
                time.sleep(min(left, KILL_POLL_S))

    def adopt_stragglers(self):
        """Group kills: take hold of members forked after the scan; return how many."""
        if self.pgrp is None:
            return 0
        known = set(m.pid for m in self.members)
        page_kib = os.sysconf('SC_PAGE_SIZE') // 1024
        added = 0
        for pid in iter_pids(self.proc):
            if pid in known:
                continue
            p = read_process(self.proc, pid, page_kib)
            if p is None or p.pgrp != self.pgrp or p.never:
                continue
            fd = None
            if self.calls.pidfd_open is not None:
                try:
                    fd = self.calls.pidfd_open(pid)
                except OSError:
                    continue
                self.fds[pid] = fd
            self.members.append(p)
            added += 1
        return added

    def close(self):
        """Release the pidfds."""
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}


def _fd_readable(fd, timeout_ms):
    """Return True if fd polls readable (a pidfd: the process has exited)."""
    import select
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout_ms))


def _fds_wait(fds, timeout_s):
    """Sleep until any fd polls readable or timeout_s passes."""
    import select
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    poller.poll(max(0, int(timeout_s * 1000)))


class KillResult(object):
    """How a kill ended: exited (bool), the last signal sent, seconds taken."""
    __slots__ = ('exited', 'signal', 'elapsed_s', 'note')

    def __init__(self, exited, sig, elapsed_s, note=''):
        self.exited = exited
        self.signal = sig
        self.elapsed_s = elapsed_s
        self.note = note


def kill_and_wait(target, sig, check, log, grace_s=TERM_GRACE_S, wait_s=KILL_WAIT_S,
                  clock=time.monotonic, announce=None):
    """Signal the target and wait for it to exit, escalating SIGTERM to SIGKILL.

    `announce(sent_s)` runs right after the first signal (sent at clock()
    time sent_s): the kill's log line is written then, not before, because
    a hog fills memory while we format.
    `check()` returns what memory calls for now (0, SIGTERM, SIGKILL): it
    escalates at once to SIGKILL, and after grace_s a victim that ignored
    SIGTERM is killed if memory is still low.  Returns a KillResult; never
    waits longer than wait_s, so one stuck victim cannot stop the daemon.
    """
    start = clock()
    if not target.send(sig):
        return KillResult(False, 0, 0.0, 'gone before the signal' if target.error == errno.ESRCH
                          else 'cannot signal it: %s' % os.strerror(target.error or 0))
    sent_s = clock()
    if sig == signal.SIGKILL:
        target.release_memory()
    if announce is not None:
        announce(sent_s)
    while True:
        if target.wait(KILL_POLL_S):
            # Members forked after the scan are signalled too (group kills).
            if not target.adopt_stragglers() or not target.send(sig):
                return KillResult(True, sig, clock() - start)
        elapsed = clock() - start
        if sig != signal.SIGKILL:
            wanted = check()
            if wanted == signal.SIGKILL or (wanted and elapsed >= grace_s):
                log.warning('escalating to SIGKILL: pid %d %s %s' % (
                    target.victim.pid, 'reached the SIGKILL level' if wanted == signal.SIGKILL
                    else 'ignored SIGTERM for %.1f s' % elapsed, 'and memory is still low'
                    if wanted != signal.SIGKILL else ''))
                if not target.send(signal.SIGKILL):
                    return KillResult(True, sig, clock() - start)
                sig = signal.SIGKILL
                target.release_memory()
            elif elapsed >= grace_s:
                return KillResult(False, sig, elapsed,
                                  'memory recovered; left running after SIGTERM')
        if elapsed >= wait_s:
            return KillResult(False, sig, elapsed, 'still alive after %.0f s' % elapsed)


def lead_metric(p, sort_by_rss):
    """Return the number a victim must keep ahead of the others on: badness, or RSS in KiB."""
    if sort_by_rss:
        return p.preference * (1 << 50) + p.rss_kib    # --prefer first, then the largest
    return p.badness


class ArmedVictim(object):
    """A victim ranked ahead of time and held open, with what it takes to trust it later.

    `runner_up` is the lead metric of the best other process that may be
    killed (or of a process born since, with --prefer), `avail_kib` the
    exact available memory at the ranking and `total_kib` the RAM + swap
    that oom_score divides by.  No other process can have grown by more
    than the drop of available memory since the ranking (short of memory
    freed meanwhile by a third), so a victim whose fresh metric still
    exceeds runner_up plus that drop is still the one a full ranking picks.
    """
    __slots__ = ('victim', 'skipped', 'target', 'runner_up', 'avail_kib', 'total_kib', 'at_s')

    def __init__(self, target, skipped, runner_up, avail_kib, total_kib, at_s):
        self.victim = target.victim
        self.skipped = skipped
        self.target = target
        self.runner_up = runner_up
        self.avail_kib = avail_kib
        self.total_kib = total_kib
        self.at_s = at_s

    def refusal(self, proc, policy, reading, member_pids, now_s):
        """Return why the victim may not be signalled now without a new ranking, or None.

        Re-reads the victim's stat, oom_score, oom_score_adj and owner, so
        the kernel rules (init, exiting, -1000, bustd itself), the admin's
        rules (a new name or owner) and the start time (a recycled pid)
        apply to what it is now; on success self.victim is that fresh record.
        """
        if now_s - self.at_s > ARM_MAX_AGE_S:
            return 'the ranking is %.2f s old' % (now_s - self.at_s)
        if not reading.exact:
            return 'no exact reading'
        old = self.victim
        fresh = read_process(proc, old.pid, os.sysconf('SC_PAGE_SIZE') // 1024)
        if fresh is None:
            return 'it exited'
        if fresh.starttime != old.starttime:
            return 'its pid was recycled'
        if not self.target.alive_count():
            return 'it exited'
        if fresh.never:
            return fresh.never
        if member_pids is not None and fresh.pid not in member_pids:
            return 'it left the watched cgroup'
        if fresh.name == old.name and fresh.uid == old.uid and not policy.match_cmdline:
            # The rules see only the name and the owner: the ranking's verdict stands.
            fresh.protected, fresh.preference = old.protected, old.preference
            fresh.badness = fresh.oom_score + PREFER_ADJUST * fresh.preference
        else:
            policy.classify(fresh)
        if fresh.protected:
            return 'it is protected now (%s)' % fresh.protected
        dropped_kib = max(0, self.avail_kib - reading.mem_available_kib)
        if policy.sort_by_rss:
            bound = dropped_kib
        else:    # oom_score is in thousandths of RAM + swap, truncated: +1
            bound = -(-dropped_kib * 1000 // max(1, self.total_kib)) + 1
        if lead_metric(fresh, policy.sort_by_rss) <= self.runner_up + bound:
            return 'another process may have caught up (%d MiB used since the ranking)' % (
                dropped_kib // 1024)
        fresh.cmdline = old.cmdline if fresh.cmdline is None else fresh.cmdline
        self.victim = fresh
        return None


def rank_for_arming(processes, policy):
    """Return (victim or None, protected processes ahead of it, runner_up metric)."""
    victim, skipped, runner = None, [], None
    for p in rank_processes(processes, policy.sort_by_rss):
        if p.never:
            continue
        if p.protected:
            if victim is None:
                skipped.append(p)
            continue
        if victim is not None:
            runner = p
            break
        victim = p
    # A process born after the ranking starts from nothing, or from --prefer's bonus.
    born = 0
    if policy.prefer is not None:
        born = (1 << 50) if policy.sort_by_rss else PREFER_ADJUST
    return victim, skipped, max(born, lead_metric(runner, policy.sort_by_rss)
                                if runner is not None else 0)


# ============================================================================
# Notifications and hooks: detached helpers that never block the killer
# ============================================================================

TEMPLATE_FIELDS = ('name', 'pid', 'uid', 'user', 'rss', 'signal', 'mem_percent', 'cmdline')
DEFAULT_NOTIFY_TITLE = 'bustd: low memory'
DEFAULT_NOTIFY_BODY = ('bustd: killed {name} (pid {pid}) to free {rss}; '
                       'memory was at {mem_percent}%')
WARN_TITLE = 'bustd: memory is low'
WARN_BODY = 'Only {mem_percent}% of memory is available: save your work.'


def find_program(name, path_env):
    """Return the absolute path of an executable `name` on PATH, or None."""
    for directory in (path_env or '/usr/local/bin:/usr/bin:/bin').split(':'):
        candidate = os.path.join(directory or '.', name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def session_buses(run_root='/run'):
    """Return [(uid, bus_path)] for every logged-in user with a D-Bus session socket."""
    import stat as stat_module
    found = []
    base = run_root + '/user'
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return found
    for name in names:
        bus = '%s/%s/bus' % (base, name)
        try:
            if name.isdigit() and stat_module.S_ISSOCK(os.stat(bus).st_mode):
                found.append((int(name), bus))
        except OSError:
            continue
    return found


def notify_argv(program, title, body):
    """Return the argv that shows a desktop notification with `program`."""
    base = os.path.basename(program)
    if base == 'notify-send':
        return [program, '--app-name=bustd', '--urgency=critical', '--', title, body]
    if base == 'gdbus':
        return [program, 'call', '--session', '--dest', 'org.freedesktop.Notifications',
                '--object-path', '/org/freedesktop/Notifications', '--method',
                'org.freedesktop.Notifications.Notify', 'bustd', '0', '', title, body,
                '[]', '{}', '-1']
    return [program, '--session', '--print-reply', '--dest=org.freedesktop.Notifications',
            '/org/freedesktop/Notifications', 'org.freedesktop.Notifications.Notify',
            'string:bustd', 'uint32:0', 'string:', 'string:' + title, 'string:' + body,
            'array:string:', 'dict:string:string:', 'int32:-1']


def render(template, fields):
    """Return template with {field}s filled; unknown fields are left as typed."""
    class Fields(dict):
        def __missing__(self, key):
            return '{' + key + '}'
    return template.format_map(Fields(fields))


def victim_fields(victim, sig, reading, user_name=str):
    """Return the facts about a kill, for templates and hook environments."""
    return {
        'name': victim.name, 'pid': victim.pid, 'uid': victim.uid,
        'user': user_name(victim.uid), 'rss': format_kib(victim.rss_kib),
        'rss_kib': victim.rss_kib, 'signal': SIGNAL_NAMES.get(sig, str(sig)),
        'mem_percent': '%.1f' % percent_of(reading.mem_available_kib, reading.mem_total_kib),
        'cmdline': victim.cmdline or '',
    }


def hook_env(fields, base_env):
    """Return the environment of a -P/-N hook: BUSTD_* facts plus PATH."""
    env = {'PATH': base_env.get('PATH', '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin')}
    env.update({
        'BUSTD_PID': str(fields['pid']), 'BUSTD_NAME': fields['name'],
        'BUSTD_UID': str(fields['uid']), 'BUSTD_CMDLINE': fields['cmdline'],
        'BUSTD_RSS_KIB': str(fields['rss_kib']), 'BUSTD_SIGNAL': fields['signal'],
        'BUSTD_MEM_AVAILABLE_PERCENT': fields['mem_percent'],
    })
    return env


class Command(object):
    """A helper to run: argv, environment, optional uid/gid to run as, a label for logs."""
    __slots__ = ('argv', 'env', 'uid', 'gid', 'label')

    def __init__(self, argv, env, label, uid=None, gid=None):
        self.argv = argv
        self.env = env
        self.label = label
        self.uid = uid
        self.gid = gid


class Helpers(object):
    """Runs helper programs detached: one batch at a time, timed out, reaped, logged.

    Each helper gets its own session (so its whole group can be killed on
    timeout), stdin from /dev/null and a pipe for its output, which goes to
    the log.  Nothing here ever waits in the kill path: poll() is called
    from the main loop.
    """

    def __init__(self, log, clock=time.monotonic, timeout_s=HELPER_TIMEOUT_S):
        self.log = log
        self.clock = clock
        self.timeout_s = timeout_s
        self.running = {}   # pid -> [label, deadline, fd, output bytes]

    def start_batch(self, commands, timeout_s=None):
        """Start the commands; return their pids ([] if a batch is still running)."""
        self.poll()
        if self.running:
            self.log.warning('helpers still running (%s): not starting %s' % (
                ', '.join(h[0] for h in self.running.values()),
                ', '.join(c.label for c in commands)))
            return []
        deadline = self.clock() + (self.timeout_s if timeout_s is None else timeout_s)
        pids = []
        for command in commands:
            pid = self._spawn(command, deadline)
            if pid:
                pids.append(pid)
        return pids

    def _spawn(self, command, deadline):
        try:
            read_fd, write_fd = os.pipe()
        except OSError as exc:
            self.log.warning('cannot start %s: %s' % (command.label, exc.strerror))
            return None
        try:
            pid = os.fork()
        except OSError as exc:   # EAGAIN/ENOMEM: likely just when memory is short
            os.close(read_fd)
            os.close(write_fd)
            self.log.warning('cannot start %s: %s' % (command.label, exc.strerror))
            return None
        if pid == 0:   # child: only os calls until exec, then _exit on any failure
            try:
                os.setsid()
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(write_fd, 1)
                os.dup2(write_fd, 2)
                if command.gid is not None:
                    os.setgroups([])
                    os.setgid(command.gid)
                if command.uid is not None:
                    os.setuid(command.uid)
                os.execve(command.argv[0], command.argv, command.env)
            except BaseException:
                pass
            os._exit(127)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        # label, deadline (None once killed), output pipe, output, timeout
        self.running[pid] = [command.label, deadline, read_fd, b'', deadline - self.clock()]
        return pid

    def poll(self):
        """Collect output, reap finished helpers, kill those past their deadline."""
        now = self.clock()
        for pid, helper in list(self.running.items()):
            self._drain(helper)
            if helper[1] is not None and now >= helper[1]:
                # The group takes the helper's children too; the pid itself in
                # case the child has not reached setsid() yet.
                for kill in (os.killpg, os.kill):
                    try:
                        kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                helper[1] = None     # killed: reaped below, or on a later poll if it
                #                      sits in uninterruptible sleep (never waited for)
            done, status = _reap(pid, patience_s=0.1 if helper[1] is None else 0)
            if done:
                self._drain(helper)
                self._finish(pid, helper, _status_text(status) if helper[1] is not None
                             else 'killed after its %.1f s timeout' % helper[4])

    def wait(self, pids, budget_s, interrupt=None):
        """Wait up to budget_s for pids to finish (interrupt() True stops early)."""
        deadline = self.clock() + budget_s
        while any(pid in self.running for pid in pids):
            self.poll()
            if self.clock() >= deadline or (interrupt is not None and interrupt()):
                return False
            time.sleep(KILL_POLL_S)
        return True

    def kill(self, pids):
        """Kill the given helpers now (a before-hook that overran its budget)."""
        for pid in pids:
            helper = self.running.get(pid)
            if helper is not None and helper[1] is not None:
                helper[1] = self.clock()   # deadline reached: poll() kills it
        if pids:
            self.poll()

    @staticmethod
    def _drain(helper):
        while True:
            try:
                chunk = os.read(helper[2], 4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not chunk:
                return
            if len(helper[3]) < 4096:   # keep the log line bounded
                helper[3] += chunk

    def _finish(self, pid, helper, how):
        del self.running[pid]
        os.close(helper[2])
        output = helper[3].decode('utf-8', 'replace').strip()
        message = '%s (pid %d): %s' % (helper[0], pid, how)
        if output:
            message += '; output: ' + printable(output.replace('\n', ' | '), 500)
        if how == 'exit 0':
            self.log.info(message)
        else:
            self.log.warning(message)


def _reap(pid, patience_s=0):
    """waitpid(pid) without blocking for more than patience_s; return (pid or 0, status)."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return pid, 0
        if done or time.monotonic() >= deadline:
            return done, status
        time.sleep(0.005)


def _status_text(status):
    """Return a waitpid status as 'exit N' or 'killed by signal N'."""
    if os.WIFSIGNALED(status):
        return 'killed by signal %d' % os.WTERMSIG(status)
    return 'exit %d' % os.WEXITSTATUS(status)


class Notifier(object):
    """Desktop notifications for every graphical session, and the -P/-N hooks."""

    def __init__(self, settings, helpers, log, user_name=str, environ=None):
        self.settings = settings
        self.helpers = helpers
        self.log = log
        self.user_name = user_name
        self.environ = os.environ if environ is None else environ
        self.program = None
        if settings.notify:
            for name in ('notify-send', 'gdbus', 'dbus-send'):
                self.program = find_program(name, self.environ.get('PATH'))
                if self.program:
                    break
            if self.program is None:
                log.warning('--notify: none of notify-send, gdbus, dbus-send is on PATH; '
                            'desktop notifications are off')
        self.next_warn = 0.0

    def desktop_commands(self, title, body):
        """Return one Command per logged-in user's session bus."""
        commands = []
        if self.program is None:
            return commands
        for uid, bus in session_buses(self.settings.run_root):
            gid = _gid_of(uid)
            env = {'PATH': self.environ.get('PATH', '/usr/bin:/bin'),
                   'DBUS_SESSION_BUS_ADDRESS': 'unix:path=' + bus,
                   'XDG_RUNTIME_DIR': os.path.dirname(bus),
                   'HOME': '/'}
            commands.append(Command(notify_argv(self.program, title, body), env,
                                    'notify %s' % self.user_name(uid),
                                    uid=uid if os.getuid() != uid else None,
                                    gid=gid if os.getuid() != uid else None))
        return commands

    def before_kill(self, fields, interrupt):
        """Run -P and wait for it, at most BEFORE_HOOK_BUDGET_S (interrupt() cuts it short)."""
        if not self.settings.exec_before:
            return
        pids = self.helpers.start_batch(
            [Command([self.settings.exec_before], hook_env(fields, self.environ), '-P hook')],
            timeout_s=self.settings.before_budget_s)
        if pids and not self.helpers.wait(pids, self.settings.before_budget_s, interrupt):
            self.log.warning('-P hook still running after %.1f s: killing it; the kill goes ahead'
                             % self.settings.before_budget_s)
            self.helpers.kill(pids)

    def after_kill(self, fields):
        """Start -N and the desktop notifications (the victim's memory is back now)."""
        commands = []
        if self.settings.exec_after:
            commands.append(Command([self.settings.exec_after],
                                    hook_env(fields, self.environ), '-N hook'))
        if self.settings.notify:
            commands += self.desktop_commands(render(self.settings.notify_title, fields),
                                              render(self.settings.notify_body, fields))
        if commands:
            self.helpers.start_batch(commands)

    def warn_low(self, reading, now):
        """--warn: notify that memory is low, at most once per WARN_EVERY_S."""
        if now < self.next_warn:
            return False
        self.next_warn = now + WARN_EVERY_S
        percent = '%.1f' % percent_of(reading.mem_available_kib, reading.mem_total_kib)
        self.log.warning('memory low: %s%% available (--warn %g%%)' % (
            percent, self.settings.warn_percent))
        if self.settings.notify:
            fields = {'mem_percent': percent}
            commands = self.desktop_commands(render(WARN_TITLE, fields), render(WARN_BODY, fields))
            if commands:
                self.helpers.start_batch(commands)
        return True


def _gid_of(uid):
    """Return uid's primary group from passwd, or uid itself."""
    try:
        import pwd
        return pwd.getpwuid(uid).pw_gid
    except (ImportError, KeyError):
        return uid


# ============================================================================
# Logging and the service manager: stderr/journald, syslog, a file, sd_notify
# ============================================================================

LEVELS = {'error': 3, 'warning': 4, 'info': 6, 'debug': 7}


class Log(object):
    """Line logger with one sink; debug lines only with -V; warn_once for degradations."""

    def __init__(self, sink, verbose=False):
        self.sink = sink
        self.verbose = verbose
        self.seen = set()

    def error(self, message):
        self.sink.write(3, message)

    def warning(self, message):
        self.sink.write(4, message)

    def info(self, message):
        self.sink.write(6, message)

    def debug(self, message):
        if self.verbose:
            self.sink.write(7, message)

    def warn_once(self, key, message):
        """Log a warning the first time `key` is seen; return True then."""
        if key in self.seen:
            return False
        self.seen.add(key)
        self.warning(message)
        return True


class StderrSink(object):
    """stderr; '<N>' priority prefixes when stderr is journald's stream (JOURNAL_STREAM)."""

    def __init__(self, fd=2, environ=None):
        self.fd = fd
        self.journal = is_journal_stream(fd, os.environ if environ is None else environ)

    def write(self, priority, message):
        if self.journal:
            line = '<%d>%s\n' % (priority, message)
        else:
            line = '%s: %s%s\n' % (PROG, {3: 'error: ', 4: 'warning: '}.get(priority, ''), message)
        try:
            os.write(self.fd, line.encode('utf-8', 'replace'))
        except OSError:
            pass   # a closed stderr must not stop the daemon

    def reopen(self):
        return None

    def describe(self):
        return 'the journal' if self.journal else 'stderr'


def is_journal_stream(fd, environ):
    """Return True if fd is the stream journald handed us (JOURNAL_STREAM=dev:ino)."""
    value = environ.get('JOURNAL_STREAM', '')
    try:
        dev, ino = [int(x) for x in value.split(':')]
        st = os.fstat(fd)
    except (ValueError, OSError):
        return False
    return st.st_dev == dev and st.st_ino == ino


def _unix_datagram_socket():
    """Return an AF_UNIX datagram socket (via _socket: socket.py imports enum)."""
    try:
        import _socket as socket_module
    except ImportError:
        import socket as socket_module
    sock = socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_DGRAM)
    sock.setblocking(False)
    return sock


class SyslogSink(object):
    """syslog over /dev/log: facility daemon, tag bustd[pid]; never blocks."""

    def __init__(self, path='/dev/log'):
        self.path = path
        self.sock = None

    def write(self, priority, message):
        data = ('<%d>%s[%d]: %s' % (3 * 8 + priority, PROG, os.getpid(), message)).encode(
            'utf-8', 'replace')
        for _ in range(2):   # a restarted syslogd needs one reconnect
            try:
                if self.sock is None:
                    self.sock = _unix_datagram_socket()
                self.sock.sendto(data, self.path)
                return
            except OSError:
                if self.sock is not None:
                    self.sock.close()
                self.sock = None

    def reopen(self):
        if self.sock is not None:
            self.sock.close()
        self.sock = None

    def describe(self):
        return 'syslog (%s)' % self.path


class FileSink(object):
    """Appends timestamped lines to a file; reopen() follows logrotate (SIGHUP)."""

    def __init__(self, path):
        self.path = path
        self.fd = None
        self.reopen()

    def reopen(self):
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        if self.fd is not None:
            os.close(self.fd)
        self.fd = fd

    def write(self, priority, message):
        line = '%s %s[%d]: %s%s\n' % (
            time.strftime('%Y-%m-%dT%H:%M:%S'), PROG, os.getpid(),
            {3: 'error: ', 4: 'warning: ', 7: 'debug: '}.get(priority, ''), message)
        try:
            os.write(self.fd, line.encode('utf-8', 'replace'))
        except OSError:
            pass

    def describe(self):
        return self.path


class ServiceManager(object):
    """sd_notify(3) in plain socket code: READY=1, STATUS=, WATCHDOG=1."""

    def __init__(self, environ, clock=time.monotonic):
        address = environ.get('NOTIFY_SOCKET', '')
        if address.startswith('@'):   # abstract socket namespace
            address = '\0' + address[1:]
        self.address = address or None
        self.sock = None
        self.watchdog_s = None
        usec = environ.get('WATCHDOG_USEC', '')
        watchdog_pid = environ.get('WATCHDOG_PID', '')
        if usec.isdigit() and int(usec) > 0 and (
                not watchdog_pid or watchdog_pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6
        self.clock = clock
        self.next_ping = 0.0

    def notify(self, message):
        """Send one datagram; return True if it went out."""
        if self.address is None:
            return False
        try:
            if self.sock is None:
                self.sock = _unix_datagram_socket()
            self.sock.sendto(message.encode('utf-8', 'replace'), self.address)
            return True
        except OSError:
            return False

    def ping(self):
        """Send WATCHDOG=1 if half the watchdog interval has passed."""
        if self.watchdog_s is None:
            return
        now = self.clock()
        if now >= self.next_ping:
            self.notify('WATCHDOG=1')
            self.next_ping = now + self.watchdog_s / 2

    def max_sleep_s(self):
        """Return the longest sleep that keeps the watchdog fed."""
        return POLL_CEILING_S if self.watchdog_s is None else min(POLL_CEILING_S,
                                                                  self.watchdog_s / 4)


def daemonize():
    """Detach: double fork, setsid, chdir /, umask 022, stdio to /dev/null.

    Returns in the daemon (the grandchild) with a pipe fd; report_started(fd)
    sends its pid to the original process, which prints where to look and
    exits 0 (exit 1 if the daemon dies before that).  Returns None in the
    original process after it has done so, with the exit status in .status.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid > 0:
        os.close(write_fd)
        data = b''
        while True:
            chunk = os.read(read_fd, 256)
            if not chunk:
                break
            data += chunk
        os.waitpid(pid, 0)
        return data.decode('utf-8', 'replace')
    os.close(read_fd)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir('/')
    os.umask(0o022)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)
    return write_fd


def check_pidfile(path, proc='/proc'):
    """Raise EnvironmentProblem if the pidfile names another live bustd."""
    pid = read_int(path)
    if pid is None or pid == os.getpid():
        return
    cmdline = read_file('%s/%d/cmdline' % (proc, pid), 4096) or b''
    if b'bustd' in cmdline:
        raise EnvironmentProblem('--pidfile %s names a running bustd (pid %d); stop it '
                                 'first or choose another --pidfile' % (path, pid))


def write_pidfile(path):
    """Write our pid to path atomically (a temporary file renamed over it)."""
    tmp = '%s.%d.tmp' % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, ('%d\n' % os.getpid()).encode())
    finally:
        os.close(fd)
    os.rename(tmp, path)


def remove_pidfile(path):
    """Remove the pidfile if it is still ours."""
    if path and read_int(path) == os.getpid():
        try:
            os.unlink(path)
        except OSError:
            pass


def capabilities(proc='/proc'):
    """Return our effective capability mask."""
    return parse_cap_eff((read_file(proc + '/self/status') or b'').decode('ascii', 'replace'))


def has_cap(mask, cap):
    return bool(mask >> cap & 1)


def protect_self(proc, log):
    """Set our own oom_score_adj to -1000 so the kernel's OOM killer spares us."""
    path = proc + '/self/oom_score_adj'
    if read_int(path) == -1000:
        return True
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, b'-1000')
        finally:
            os.close(fd)
        return True
    except OSError as exc:
        log.warning('cannot set oom_score_adj -1000 (%s; needs CAP_SYS_RESOURCE): the '
                    "kernel's OOM killer could pick bustd; bustd.service sets "
                    'OOMScoreAdjust=-1000 instead' % exc.strerror)
        return False


def release_startup_memory(calls):
    """Give the memory of start-up (compiling this file, argparse) back to the kernel.

    Running as a script, Python compiles these 3000 lines on every start:
    ~5 MiB of heap that glibc keeps after it is freed.  Modules only the
    command line needed are dropped; malloc_trim(3) returns the free pages.
    """
    for name in ('argparse', 'gettext', 'locale', 'shutil', 'fnmatch', 'textwrap'):
        sys.modules.pop(name, None)
    import gc
    gc.collect()
    if calls.malloc_trim is not None:
        calls.malloc_trim(0)


def lock_memory(calls, caps, log):
    """mlockall(CURRENT|FUTURE|ONFAULT), else CURRENT|FUTURE; return the mode used.

    ONFAULT locks only the pages bustd has touched (warmed by a dry victim
    scan first): RSS stays as it was (VmLck counts whole mappings, so it
    reads larger).  Without ONFAULT (kernels < 4.4) every mapped page of
    the interpreter and its libraries is faulted in: measured +3 MiB.
    """
    if calls.mlockall is None:
        return 'off (no ctypes)'
    if not has_cap(caps, CAP_IPC_LOCK):
        # With MCL_FUTURE, RLIMIT_MEMLOCK would turn later allocations into
        # MemoryError: better unlocked than crashed.
        log.warning('not locking memory (no CAP_IPC_LOCK): under pressure bustd itself '
                    'may be paged out and react late')
        return 'off (no CAP_IPC_LOCK)'
    for flags, name in ((MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT, 'current+future+onfault'),
                        (MCL_CURRENT | MCL_FUTURE, 'current+future')):
        try:
            calls.mlockall(flags)
            return name
        except OSError as exc:
            if exc.errno != errno.EINVAL:   # EINVAL: kernel < 4.4 has no ONFAULT
                log.warning('mlockall failed (%s): bustd may be paged out under pressure'
                            % exc.strerror)
                return 'off (%s)' % exc.strerror
    return 'off'


# ============================================================================
# Main loop
# ============================================================================

class Flags(object):
    """What the signal handlers ask of the loop (handlers only set these)."""
    __slots__ = ('stop', 'hup', 'usr1')

    def __init__(self):
        self.stop = 0
        self.hup = False
        self.usr1 = False


def install_signal_handlers(flags):
    """Route SIGTERM/SIGINT/SIGHUP/SIGUSR1 to flags; return a pipe fd that wakes the loop."""
    def on_stop(signum, frame):
        flags.stop = signum

    def on_hup(signum, frame):
        flags.hup = True

    def on_usr1(signum, frame):
        flags.usr1 = True

    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    try:
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except TypeError:   # Python < 3.7
        signal.set_wakeup_fd(write_fd)
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    signal.signal(signal.SIGUSR1, on_usr1)
    return read_fd


def open_psi_trigger(path):
    """Register a PSI trigger on path; return (fd, trigger) or (None, why not)."""
    if path is None:
        return None, 'no PSI file'
    why = 'no PSI'
    for trigger in PSI_TRIGGERS:
        try:
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            return None, exc.strerror
        try:
            os.write(fd, trigger + b'\0')
            return fd, trigger.decode()
        except OSError as exc:   # EINVAL: window not allowed; EPERM/EACCES: unprivileged
            why = exc.strerror
            os.close(fd)
    return None, why


class Waiter(object):
    """The loop's sleep: poll(2) on the signal pipe and optional event fds.

    A PSI trigger (POLLPRI) or a cgroup threshold eventfd (POLLIN) ends the
    sleep early, so the next reading comes at once.
    """

    def __init__(self):
        import select
        self.select = select
        self.poller = select.poll()
        self.drains = {}
        self.woken_by = None
        self.far_signals = None   # set by watch_signals_far()
        self.far_events = False   # an event fd that matters far from the levels too
        self.far_blocked = False

    def add(self, fd, events, name, drain=True, far=False):
        """Watch fd; `far`: it must also end sleeps far from every level (see far())."""
        self.poller.register(fd, events)
        self.drains[fd] = (name, drain)
        self.far_events = self.far_events or far

    def watch_signals_far(self, signums):
        """Let far() wait for these signals alone, where the kernel offers sigtimedwait."""
        if hasattr(signal, 'sigtimedwait') and hasattr(signal, 'pthread_sigmask'):
            self.far_signals = tuple(signums)

    def __call__(self, seconds):
        self.woken_by = None
        try:
            events = self.poller.poll(int(seconds * 1000) + 1)
        except InterruptedError:
            return
        for fd, event in events:
            name, drain = self.drains.get(fd, ('?', False))
            self.woken_by = name
            if event & (self.select.POLLERR | self.select.POLLNVAL):
                # e.g. the watched cgroup was removed: its PSI trigger then polls
                # POLLERR|POLLPRI for ever, which would turn every sleep into a spin.
                self.poller.unregister(fd)
                continue
            if drain:
                try:
                    os.read(fd, 512)
                except OSError:
                    pass

    def far(self, seconds):
        """Sleep far from every level; return True if a signal ended it.

        There the PSI trigger cannot matter (its rule needs memory near a
        level), so the sleep is one rt_sigtimedwait(2) on the loop's signals,
        which stay blocked from the first far() to release(): about 10 us of
        CPU per wake-up less than poll(2) on the pipe and the trigger.  A signal
        taken here is sent again, and its handler runs at release().  With
        an event fd that matters here (a cgroup threshold), or without
        sigtimedwait: the usual poll.
        """
        signums = self.far_signals
        if signums is None or self.far_events:
            self(seconds)
            return False
        if not self.far_blocked:
            signal.pthread_sigmask(signal.SIG_BLOCK, signums)
            self.far_blocked = True
        info = signal.sigtimedwait(signums, seconds)
        if info is None:
            return False
        os.kill(os.getpid(), info.si_signo)   # pending until release()
        return True

    def release(self):
        """End a series of far() sleeps: unblock the signals (their handlers run now)."""
        if self.far_blocked:
            self.far_blocked = False
            signal.pthread_sigmask(signal.SIG_UNBLOCK, self.far_signals)


class Daemon(object):
    """The watch loop: read, decide, and act on one victim at a time."""

    def __init__(self, settings, sensor, policy, calls, log, notifier=None, helpers=None,
                 service=None, clock=time.monotonic, sleep=time.sleep, fill=None,
                 far_sleep=None):
        self.settings = settings
        self.sensor = sensor
        self.policy = policy
        self.calls = calls
        self.log = log
        self.notifier = notifier
        self.helpers = helpers
        self.service = service
        self.clock = clock
        self.sleep = sleep
        self.far_sleep = far_sleep   # the idle loop's sleeper: a Waiter (far, release)
        self.flags = Flags()
        self.reading = Reading()
        self.th = None
        self.user_name = user_name_function()
        self.next_report = 0.0
        self.next_dry_run_log = 0.0
        self.next_no_victim_log = 0.0
        self.kills = 0
        self.event_fd_hook = None   # called with new thresholds (cgroup v1 events)
        self.fill = fill or FillModel()
        self.last_avail_kib, self.last_exact, self.last_s = 0, None, 0.0
        self.far = False            # the last step's reading was far from every level
        self.near_kib = -1          # at or below this available memory: near a level
        self.armed = None
        self.next_arm = 0.0

    # -- readings -------------------------------------------------------
    def start(self):
        """Take the first (exact) reading and derive the thresholds."""
        self.sensor.read_exact(self.reading, None)
        self.refresh_thresholds()

    def refresh_thresholds(self):
        """Recompute the thresholds when RAM or swap totals changed (hotplug, swapon, limits)."""
        r, th = self.reading, self.th
        if th is not None and r.mem_total_kib == th.mem_total_kib \
                and r.swap_total_kib == th.swap_total_kib:
            return False
        self.th = compute_thresholds(self.settings, r.mem_total_kib, r.swap_total_kib)
        self.near_kib = max(self.th.trigger_kib,
                            self.th.mem_term_kib + int(r.mem_total_kib * ARM_BAND_PERCENT / 100))
        if th is not None:
            self.log.info('totals changed: memory %s, swap %s; thresholds recomputed' % (
                format_kib(r.mem_total_kib), format_kib(r.swap_total_kib)))
        if self.th.clamped:
            self.log.warning('-m/-M is not below the memory total %s now: using %g%%,%g%% '
                             'until it is' % ((format_kib(r.mem_total_kib),)
                                              + DEFAULT_MEM_PERCENT))
        if self.event_fd_hook is not None:
            self.event_fd_hook(self.th)
        return True

    def check_now(self):
        """Return what an exact reading calls for now (0, SIGTERM, SIGKILL)."""
        self.sensor.read_exact(self.reading, self.th)
        return decide(self.reading, self.th) if self.reading.exact else 0

    # -- one poll -----------------------------------------------------------
    def step(self):
        """Read, decide, act; return how long to sleep before the next poll (s)."""
        r = self.sensor.read(self.reading, self.th)
        self.refresh_thresholds()
        th = self.th
        sig = decide(r, th) if r.exact else 0
        now = self.clock()
        if sig:
            if self.log.verbose:
                self.log.debug('poll: %s -> %s' % (describe_trigger(r, th), SIGNAL_NAMES[sig]))
            return self.act(sig, now)
        if th.warn_kib >= 0 and r.exact and r.mem_available_kib <= th.warn_kib \
                and self.notifier is not None:
            self.notifier.warn_low(r, now)
        if self.settings.report_interval_s and now >= self.next_report:
            self.next_report = now + self.settings.report_interval_s
            self.log.info(self.report_line())
        delay = self.next_sleep_s(r, now)
        # Above near_kib no rule can fire (every level, PSI's and --warn's too, is below).
        self.far = r.mem_available_kib > self.near_kib
        if not self.far and now >= self.next_arm and not self.settings.kill_pgroup:
            self.arm(now)
        elif self.far and self.armed is not None:
            self.disarm()
        if self.log.verbose:
            self.log.debug('poll: %s mem_available=%s%s psi_some=%s -> nothing; next in %.0f ms'
                           % ('exact' if r.exact else 'cheap', format_kib(r.mem_available_kib),
                              '' if r.exact else ' (lower bound)', r.psi_some_avg10,
                              delay * 1000))
        return delay

    def next_sleep_s(self, r, now):
        """Return the schedule's sleep after reading r at clock time now; learn from the drop."""
        if r.exact == self.last_exact:
            self.fill.learn(self.last_avail_kib - r.mem_available_kib, now - self.last_s, now)
        self.last_avail_kib, self.last_exact, self.last_s = r.mem_available_kib, r.exact, now
        return sleep_time_s(r, self.th, self.fill.rate_kib_s)

    def idle(self, delay_s, budget_s):
        """Sleep delay_s, then keep polling cheaply while the readings stay far from every level.

        The idle wake-up is one poll(2), one cheap reading and the schedule;
        it returns to step() when a reading comes near a level or the
        totals change, when a signal arrives, or after budget_s of sleep
        (reports, helpers, the watchdog, limits).
        """
        far = self.far_sleep
        flags, read, clock = self.flags, self.sensor.read, self.clock
        wait = self.sleep if far is None else far.far
        reading, th, near_kib = self.reading, self.th, self.near_kib
        slept_s = 0.0
        try:
            while True:
                if wait(delay_s):
                    return         # a signal: its handler runs at release()
                slept_s += delay_s
                if slept_s >= budget_s or flags.stop or flags.hup or flags.usr1:
                    return
                r = read(reading, th)
                if r.mem_available_kib <= near_kib or r.mem_total_kib != th.mem_total_kib \
                        or r.swap_total_kib != th.swap_total_kib:
                    return
                delay_s = self.next_sleep_s(r, clock())
        finally:
            if far is not None:
                far.release()

    # -- the victim, ready before it is needed --------------------------------
    def arm(self, now):
        """Rank the processes now and hold the victim, so that a kill needs no ranking."""
        s = self.settings
        started = self.clock()
        exact = self.sensor.read_exact(Reading(), self.th)
        processes = scan_processes(s.proc, self.policy, self.sensor.member_pids())
        victim, skipped, runner_up = rank_for_arming(processes, self.policy)
        old, self.armed = self.armed, None
        if old is not None and (victim is None or old.victim.pid != victim.pid
                                or old.victim.starttime != victim.starttime):
            old.target.close()
            old = None
        if victim is not None and exact.exact:
            if old is not None:
                target = old.target
                target.victim = target.members[0] = victim
            else:
                target = Target(victim, self.calls, s.proc)
            if old is not None or target.open():
                victim.cmdline = read_cmdline(s.proc, victim.pid)
                self.armed = ArmedVictim(target, skipped, runner_up, exact.mem_available_kib,
                                         exact.mem_total_kib + exact.swap_total_kib, now)
        self.next_arm = now + max(ARM_REFRESH_S, ARM_COST_FACTOR * (self.clock() - started))

    def disarm(self):
        """Let go of the pre-armed victim."""
        if self.armed is not None:
            self.armed.target.close()
            self.armed = None

    def take_armed(self, now):
        """Return the pre-armed victim if it is still valid for the current reading, else None."""
        armed, self.armed = self.armed, None
        if armed is None:
            return None
        why = armed.refusal(self.settings.proc, self.policy, self.reading,
                            self.sensor.member_pids(), now)
        if why is None:
            return armed
        armed.target.close()
        self.log.debug('pre-armed pid %d %s not used: %s; ranking again' % (
            armed.victim.pid, printable(armed.victim.name), why))
        return None

    def report_line(self):
        """Return the -r memory line (an exact reading)."""
        r = self.reading
        self.sensor.read_exact(r)      # with PSI, whatever the level
        return 'mem avail: %s of %s (%.1f%%), swap free: %s of %s (%.1f%%)%s' % (
            format_kib(r.mem_available_kib), format_kib(r.mem_total_kib),
            percent_of(r.mem_available_kib, r.mem_total_kib), format_kib(r.swap_free_kib),
            format_kib(r.swap_total_kib), percent_of(r.swap_free_kib, r.swap_total_kib),
            '' if r.psi_some_avg10 is None else ', psi some avg10: %.2f' % r.psi_some_avg10)

    # -- acting -------------------------------------------------------------
    def act(self, sig, now):
        """Choose a victim and kill it; return the seconds to sleep afterwards.

        `now` is the clock time of the reading that called for sig.
        """
        s = self.settings
        if s.dry_run and now < self.next_dry_run_log:
            return sleep_time_s(self.reading, self.th, self.fill.rate_kib_s)
        armed = self.take_armed(now)
        if armed is not None:   # validated against this very reading: no ranking, no re-read
            return self.signal_victim(sig, armed.victim, armed.skipped, armed.target,
                                      describe_trigger(self.reading, self.th), now, 'pre-armed')
        trigger = describe_trigger(self.reading, self.th)
        victim, skipped = find_victim(s.proc, self.policy, self.sensor.member_pids())
        if victim is None:
            if now >= self.next_no_victim_log:
                self.next_no_victim_log = now + 60
                self.log.warning('memory is low (%s) but no process may be killed '
                                 '(%d protected); still watching' % (trigger, len(skipped)))
            return NO_VICTIM_RETRY_S
        # The scan took time: act only if memory is still low.
        wanted = self.check_now()
        if not wanted:
            self.log.info('memory recovered during the victim scan (%s): not killing '
                          'pid %d %s' % (describe_trigger(self.reading, self.th), victim.pid,
                                         printable(victim.name)))
            return sleep_time_s(self.reading, self.th, self.fill.rate_kib_s)
        sig = wanted
        trigger = describe_trigger(self.reading, self.th)
        victim.cmdline = read_cmdline(s.proc, victim.pid) if victim.cmdline is None \
            else victim.cmdline
        target = self.make_target(victim)
        if not s.dry_run and not target.open():
            self.log.info('pid %d %s exited or was replaced before the signal' % (
                victim.pid, printable(victim.name)))
            return 0.0
        return self.signal_victim(sig, victim, skipped, target, trigger, now, 'full ranking')

    def signal_victim(self, sig, victim, skipped, target, trigger, now, how):
        """Signal the opened target (log it in a dry run); return the seconds to sleep after.

        `how` says how the victim was found, for -V's latency line.
        """
        s = self.settings
        if s.dry_run:
            target.close()
            self.next_dry_run_log = now + DRY_RUN_LOG_EVERY_S
            self.log.warning('dry run, no signal sent: ' + kill_line(sig, victim, trigger,
                                                                    target.pgrp))
            self.log.info('dry run: chose pid %d because: %s' % (
                victim.pid, describe_victim(victim, skipped, s.sort_by_rss)))
            return sleep_time_s(self.reading, self.th, self.fill.rate_kib_s)
        # The facts for helpers name the user (a passwd lookup): not before the
        # signal unless the -P hook needs them.
        fields = None
        if self.notifier is not None and s.exec_before:
            fields = victim_fields(victim, sig, self.reading, self.user_name)
            self.notifier.before_kill(fields, lambda: self.check_now() == signal.SIGKILL)
            sig = self.check_now()      # the hook took time: memory may have recovered
            if not sig:
                target.close()
                self.log.info('memory recovered while the -P hook ran (%s): not killing pid %d'
                              % (describe_trigger(self.reading, self.th), victim.pid))
                return sleep_time_s(self.reading, self.th, self.fill.rate_kib_s)
            trigger = describe_trigger(self.reading, self.th)
            fields = victim_fields(victim, sig, self.reading, self.user_name)

        def announce(sent_s):
            nonlocal fields
            if fields is None:
                fields = victim_fields(victim, sig, self.reading, self.user_name)
            self.log.warning(kill_line(sig, victim, trigger, target.pgrp))
            self.log.debug('chose pid %d because: %s' % (
                victim.pid, describe_victim(victim, skipped, s.sort_by_rss)))
            self.log.debug('latency: %.1f ms from the deciding reading to the signal (%s)'
                           % ((sent_s - now) * 1000, how))
        try:
            result = kill_and_wait(target, sig, self.check_now, self.log, announce=announce)
        finally:
            target.close()
        if not result.signal:     # nothing was sent: no kill, and no tight retry loop
            if now >= self.next_no_victim_log:
                self.next_no_victim_log = now + 60
                self.log.warning('pid %d %s: %s' % (victim.pid, printable(victim.name),
                                                    result.note))
            return KILL_POLL_S if target.error == errno.ESRCH else NO_VICTIM_RETRY_S
        self.kills += 1
        if result.exited:
            self.sensor.read_exact(self.reading, self.th)
            self.log.info('exited: pid=%d name="%s" signal=%s after=%.2fs mem_available=%.1f%%'
                          % (victim.pid, printable(victim.name),
                             SIGNAL_NAMES.get(result.signal, result.signal), result.elapsed_s,
                             percent_of(self.reading.mem_available_kib,
                                        self.reading.mem_total_kib)))
            if self.notifier is not None:
                fields['signal'] = SIGNAL_NAMES.get(result.signal, str(result.signal))
                self.notifier.after_kill(fields)
        else:
            self.log.warning('pid %d %s: %s' % (victim.pid, printable(victim.name), result.note))
        return 0.0

    def make_target(self, victim):
        """Return the Target: the victim, or its process group with -g when that is safe."""
        if not self.settings.kill_pgroup:
            return Target(victim, self.calls, self.settings.proc)
        members = [p for p in scan_processes(self.settings.proc, self.policy)
                   if p.pgrp == victim.pgrp]
        refusal = group_refusal(members or [victim], os.getpid(), os.getpgrp(), os.getsid(0),
                                self.sensor.member_pids())
        if refusal:
            self.log.warning('-g: not signalling process group %d: %s; killing pid %d alone'
                             % (victim.pgrp, refusal, victim.pid))
            return Target(victim, self.calls, self.settings.proc)
        return Target(victim, self.calls, self.settings.proc, members, victim.pgrp)

    # -- signals and status --------------------------------------------------
    def handle_flags(self):
        """Act on SIGHUP (reopen the log) and SIGUSR1 (log a status)."""
        if self.flags.hup:
            self.flags.hup = False
            try:
                self.log.sink.reopen()
                self.log.info('SIGHUP: reopened the log (%s)' % self.log.sink.describe())
            except OSError as exc:
                self.log.error('SIGHUP: cannot reopen the log: %s' % exc.strerror)
        if self.flags.usr1:
            self.flags.usr1 = False
            for line in self.status_lines():
                self.log.info(line)

    def status_lines(self):
        """Return the SIGUSR1 status: reading, thresholds, the top 5 candidates."""
        self.sensor.read_exact(self.reading, self.th)
        th = self.th
        lines = ['status: ' + self.report_line(),
                 'status: kills so far: %d; %s' % (self.kills, describe_levels(th))]
        processes = scan_processes(self.settings.proc, self.policy, self.sensor.member_pids())
        table = format_table(processes, self.settings.sort_by_rss, self.user_name, limit=5)
        lines += ['status: ' + line for line in table.split('\n')]
        return lines

    def run(self):
        """Poll until SIGTERM/SIGINT; return the exit status."""
        flags, helpers, service = self.flags, self.helpers, self.service
        max_sleep_s = POLL_CEILING_S if service is None else service.max_sleep_s()
        while not flags.stop:
            if flags.hup or flags.usr1:
                self.handle_flags()
            try:
                delay = self.step()
            except Exception as exc:   # a bug or a kernel surprise must not end the watch
                self.log.error('unexpected error, still watching: %s' % describe_exception(exc))
                delay = NO_VICTIM_RETRY_S
            if helpers is not None and helpers.running:
                helpers.poll()
                delay = min(delay, POLL_CEILING_S / 3)    # reap and time helpers out promptly
            if service is not None:
                service.ping()
            if delay > 0 and not flags.stop:
                # -V logs every poll, and running helpers are polled: both take full steps.
                if self.far and not self.log.verbose and not (helpers and helpers.running):
                    self.idle(min(delay, max_sleep_s), min(IDLE_STEP_EVERY_S, max_sleep_s))
                else:
                    self.sleep(min(delay, max_sleep_s))
        name = {signal.SIGTERM: 'SIGTERM', signal.SIGINT: 'SIGINT'}.get(
            self.flags.stop, str(self.flags.stop))
        self.log.info('%s received: exiting after %d kill(s)' % (name, self.kills))
        return EXIT_OK


def describe_exception(exc):
    """Return 'Type: message (file:line in function)' for one log line."""
    import traceback
    frames = traceback.extract_tb(exc.__traceback__)
    where = ' (%s:%d in %s)' % (os.path.basename(frames[-1][0]), frames[-1][1],
                                frames[-1][2]) if frames else ''
    return '%s: %s%s' % (type(exc).__name__, exc, where)


def kill_line(sig, victim, trigger, pgrp=None):
    """Return the one greppable log line of a kill."""
    return ('kill: %s %spid=%d uid=%d name="%s" oom_score=%d oom_score_adj=%d rss=%s '
            'cmdline="%s" %s' % (
                SIGNAL_NAMES.get(sig, sig), '' if pgrp is None else 'pgrp=%d ' % pgrp,
                victim.pid, victim.uid, printable(victim.name), victim.oom_score,
                victim.oom_score_adj, format_kib(victim.rss_kib).replace(' ', ''),
                printable(victim.cmdline or '', 300).replace('"', '\\"'), trigger))


def describe_levels(th):
    """Return the thresholds as one line of text."""
    text = 'SIGTERM at mem <= %s, SIGKILL at mem <= %s' % (
        format_kib(th.mem_term_kib), format_kib(th.mem_kill_kib))
    if th.swap_total_kib:
        text += ' (with swap <= %s / %s)' % (format_kib(th.swap_term_kib),
                                             format_kib(th.swap_kill_kib))
    if th.psi_avg10 is not None:
        text += '; PSI some avg10 >= %g below %s' % (th.psi_avg10, format_kib(th.psi_mem_max_kib))
    return text


# ============================================================================
# Command line
# ============================================================================

class Settings(object):
    """Everything bustd was asked to do: built by parse_settings, read by the loop."""

    def __init__(self, **overrides):
        self.mem_percent = DEFAULT_MEM_PERCENT
        self.swap_percent = DEFAULT_SWAP_PERCENT
        self.mem_size_kib = None
        self.swap_size_kib = None
        self.psi_avg10 = DEFAULT_PSI_AVG10
        self.psi_mem_max_percent = DEFAULT_PSI_MEM_MAX_PERCENT
        self.cgroup = None
        self.unkillables = ()
        self.ignore_re = None
        self.ignore_root_user = False
        self.default_unkillables = True
        self.prefer_re = None
        self.avoid_re = None
        self.match = 'name'
        self.sort_by_rss = False
        self.kill_pgroup = False
        self.list = False
        self.notify = False
        self.notify_title = DEFAULT_NOTIFY_TITLE
        self.notify_body = DEFAULT_NOTIFY_BODY
        self.warn_percent = None
        self.exec_after = None
        self.exec_before = None
        self.before_budget_s = BEFORE_HOOK_BUDGET_S
        self.daemon = True
        self.pidfile = None
        self.log_file = None
        self.syslog = False
        self.verbose = False
        self.report_interval_s = 0.0
        self.dry_run = False
        self.proc = '/proc'
        self.sys_fs = '/sys'
        self.run_root = '/run'
        for name, value in overrides.items():
            if not hasattr(self, name):
                raise TypeError('unknown setting %r' % name)
            setattr(self, name, value)

    REGEXES = ('ignore_re', 'prefer_re', 'avoid_re')

    def to_dict(self):
        """Return the settings as plain values (marshal-able: regexes as patterns)."""
        plain = dict(vars(self))
        for name in self.REGEXES:
            if plain[name] is not None:
                plain[name] = plain[name].pattern
        return plain

    @classmethod
    def from_dict(cls, plain):
        """Return Settings from to_dict()'s output."""
        plain = dict(plain)
        for name in cls.REGEXES:
            if plain.get(name) is not None:
                plain[name] = _compile_regex(plain[name])
        return cls(**plain)


class UsageError(Exception):
    """A bad command line (exit status 2); the message names the flag and the fix."""


DESCRIPTION = '''\
NAME
  bustd - kill the process that eats the memory, before the machine freezes

SYNOPSIS
  bustd [OPTIONS]            (daemonizes; -n stays in the foreground)
  bustd --list [OPTIONS]     (who would be killed now, then exit)

DESCRIPTION
  bustd watches available memory, free swap and memory pressure (PSI).
  When both available memory and free swap fall to their SIGTERM levels
  it sends SIGTERM to one victim (highest oom_score, ties: larger RSS),
  escalating to SIGKILL when memory reaches the SIGKILL levels or the
  victim ignores SIGTERM for 5 s.  It also sends SIGTERM when PSI "some"
  avg10 reaches --psi while available memory is below --psi-mem-max: the
  thrashing a big swap hides.  It waits for each victim to exit (at most
  10 s) before choosing another, and never kills PID 1, kernel threads,
  itself, exiting processes, oom_score_adj -1000 or protected processes.'''

EPILOG = '''\
THRESHOLDS
  PERCENT[,KILL_PERCENT] and SIZE[,KILL_SIZE] take earlyoom's syntax;
  KILL defaults to half of the first value.  SIZE is KiB, or a number with
  K, M, G or T (512M, 1.5G).  When a percentage and a size are both given
  the lower level is used (-m 10 -M 1G: 10 %, but at most 1 GiB).  No swap
  configured counts as "swap low".  With --cgroup every level is relative
  to the cgroup's limit, and only the cgroup's processes are killed.

POLLING
  Every poll costs one sysinfo(2) call; /proc/meminfo and PSI are read only
  near a threshold.  The next poll comes after the time the headroom lasts
  at 8 GiB/s (swap: 800 MiB/s), between 10 ms and 3 s.  A PSI trigger
  (some 150 ms per 1 s) and, for cgroup v1, a usage threshold event wake it
  early.

PROTECTED BY DEFAULT (--no-default-unkillables turns this off)
  {protected}

EXAMPLES
  bustd -n                         foreground, default thresholds
  bustd -n --dry-run -m 99 -V      show what would be killed, and why
  bustd --list -u 'sshd|Xorg' --prefer '^(chrome|firefox)$'
  bustd -m 15,8 -s 50 -M 2G        earlyoom-style levels
  bustd -n --cgroup /sys/fs/cgroup/system.slice/build.service
  bustd -n --cgroup auto           inside a container, watching its limit
  bustd --notify --warn 15 -N /usr/local/bin/on-oom-kill

LOGS
  Foreground: stderr (with <N> priority prefixes under journald).
  Daemonized: syslog via /dev/log (facility daemon, tag bustd), or the file
  {log_file} where there is no /dev/log, or --log-file.
  Each kill is one line with "kill: SIGTERM pid=...", its end one line
  with "exited: pid=...".

SIGNALS
  SIGTERM, SIGINT  exit 0            SIGHUP   reopen the log file
  SIGUSR1          log the current reading, thresholds and top 5 candidates

EXIT STATUS
  0  stopped by SIGTERM/SIGINT, or --list/--help/--version done
  1  the environment is unusable: not Linux, /proc unreadable, pidfile in
     use, log file not writable
  2  bad command line (the message names the flag and the fix)'''

DEFAULT_LOG_FILE = '/var/log/bustd.log'


def _arg_type(parse, name):
    """Wrap a ValueError-raising parser as an argparse type with a readable name."""
    import argparse

    def convert(text):
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc))
    convert.__name__ = name
    return convert


def _psi_value(text):
    if text.strip().lower() in ('off', 'no', 'none'):
        return None
    value = parse_percent(text)
    return value


def _compile_regex(text):
    import re
    try:
        return re.compile(text)
    except re.error as exc:
        raise ValueError('bad regular expression %r: %s; e.g. --prefer "^(firefox|chrome)$"'
                         % (text, exc))


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise ValueError('%r is not a number of seconds; e.g. -r 60' % text)
    if not 0 <= value < 1e9:
        raise ValueError('%r must be 0 or more seconds' % text)
    return value


def _executable(text):
    if not os.path.isabs(text):
        raise ValueError('%r is not an absolute path; give e.g. /usr/local/bin/on-oom' % text)
    if not (os.path.isfile(text) and os.access(text, os.X_OK)):
        raise ValueError('%s is not an executable file; check the path and chmod +x it' % text)
    return text


def _template(text):
    try:
        text.format_map(dict((f, '') for f in TEMPLATE_FIELDS))
    except KeyError as exc:
        raise ValueError('unknown field {%s}; use %s' % (
            exc.args[0], ' '.join('{%s}' % f for f in TEMPLATE_FIELDS)))
    except (ValueError, IndexError, AttributeError, TypeError) as exc:
        raise ValueError('bad template %r: %s; write fields as {name}' % (text, exc))
    return text


def build_parser():
    """Return the argparse parser (imported here: the daemon does not keep it loaded)."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message):
            raise UsageError(message)

    parser = Parser(prog=PROG, description=DESCRIPTION, add_help=False,
                    epilog=EPILOG.format(
                        protected='\n  '.join(_wrap(' '.join(DEFAULT_UNKILLABLES), 70)),
                        log_file=DEFAULT_LOG_FILE),
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    pct_pair = _arg_type(lambda t: parse_pair(t, parse_percent), 'PERCENT[,KILL_PERCENT]')
    size_pair = _arg_type(lambda t: parse_pair(t, parse_size_kib), 'SIZE[,KILL_SIZE]')

    g = parser.add_argument_group('when to act')
    g.add_argument('-m', '--mem-min', metavar='PERCENT[,KILL]', type=pct_pair,
                   help='available memory levels in %% of RAM (default 10,5)')
    g.add_argument('-s', '--swap-min', metavar='PERCENT[,KILL]', type=pct_pair,
                   help='free swap levels in %% of swap (default 10,5)')
    g.add_argument('-M', '--mem-min-size', metavar='SIZE[,KILL]', type=size_pair,
                   help='available memory levels as sizes (512M, 1G; plain = KiB)')
    g.add_argument('-S', '--swap-min-size', metavar='SIZE[,KILL]', type=size_pair,
                   help='free swap levels as sizes')
    g.add_argument('-p', '--psi', metavar='AVG10|off', type=_arg_type(_psi_value, 'AVG10'),
                   default=DEFAULT_PSI_AVG10,
                   help='SIGTERM when memory PSI "some" avg10 reaches this (default 25)')
    g.add_argument('--psi-mem-max', metavar='PERCENT', type=_arg_type(parse_percent, 'PERCENT'),
                   default=DEFAULT_PSI_MEM_MAX_PERCENT,
                   help='...while available memory is below this %% (default 15)')
    g.add_argument('--cgroup', metavar='PATH|auto',
                   help='watch one cgroup (v1 or v2) and kill only inside it; auto = '
                        "bustd's own cgroup")

    g = parser.add_argument_group('whom to kill')
    g.add_argument('-u', '--unkillables', metavar='GLOB[|GLOB...]', action='append', default=[],
                   help='never kill processes whose name matches a glob (repeatable)')
    g.add_argument('--ignore', metavar='REGEX', type=_arg_type(_compile_regex, 'REGEX'),
                   help='never kill processes whose name matches REGEX')
    g.add_argument('--ignore-root-user', action='store_true',
                   help='never kill processes owned by root')
    g.add_argument('--no-default-unkillables', action='store_true',
                   help='drop the built-in protected list (see below)')
    g.add_argument('--prefer', metavar='REGEX', type=_arg_type(_compile_regex, 'REGEX'),
                   help='kill matching names first (oom_score +%d)' % PREFER_ADJUST)
    g.add_argument('--avoid', metavar='REGEX', type=_arg_type(_compile_regex, 'REGEX'),
                   help='kill matching names last (oom_score -%d)' % PREFER_ADJUST)
    g.add_argument('--match', choices=('name', 'cmdline'), default='name',
                   help='what -u/--ignore/--prefer/--avoid see: the process name '
                        '(default) or the whole command line, NULs as spaces')
    g.add_argument('--sort-by-rss', action='store_true',
                   help='choose the largest RSS instead of the highest oom_score')
    g.add_argument('-g', '--kill-pgroup', action='store_true',
                   help="signal the victim's whole process group (refused for a group "
                        "with PID 1, bustd, bustd's session or a protected process)")
    g.add_argument('--list', '--tasks', dest='list', action='store_true',
                   help='print who would be killed, in order, and exit')

    g = parser.add_argument_group('telling people')
    g.add_argument('--notify', action='store_true',
                   help="desktop notification to every logged-in user after a kill")
    g.add_argument('--notify-title', metavar='TEMPLATE', type=_arg_type(_template, 'TEMPLATE'),
                   help='notification title (default "%s")' % DEFAULT_NOTIFY_TITLE)
    g.add_argument('--notify-body', metavar='TEMPLATE', type=_arg_type(_template, 'TEMPLATE'),
                   help='notification body; fields: %s' % ' '.join(
                       '{%s}' % f for f in TEMPLATE_FIELDS))
    g.add_argument('--warn', metavar='PERCENT', type=_arg_type(parse_percent, 'PERCENT'),
                   help='warn (log, and notify with --notify) when available memory falls '
                        'below PERCENT, at most once a minute')
    g.add_argument('-N', '--exec-after', metavar='PATH', type=_arg_type(_executable, 'PATH'),
                   help='run PATH after each kill (BUSTD_* environment)')
    g.add_argument('-P', '--exec-before', metavar='PATH', type=_arg_type(_executable, 'PATH'),
                   help='run PATH just before each kill; the kill waits at most %g s'
                        % BEFORE_HOOK_BUDGET_S)

    g = parser.add_argument_group('running')
    g.add_argument('-n', '--no-daemon', action='store_true',
                   help='stay in the foreground, log to stderr (for systemd, containers)')
    g.add_argument('--pidfile', metavar='PATH', help='write the pid here (removed on exit)')
    g.add_argument('--log-file', metavar='PATH', help='log to this file')
    g.add_argument('--syslog', action='store_true', help='log to syslog even in the foreground')
    g.add_argument('-V', '--verbose', action='store_true',
                   help='debug output: every poll, why each victim was chosen, and the time '
                        'from the deciding reading to the signal')
    g.add_argument('-r', '--report-interval', metavar='SECONDS', type=_arg_type(
        _seconds, 'SECONDS'), default=0.0, help='log a memory line every SECONDS (0 = off)')
    g.add_argument('--dry-run', '--dryrun', dest='dry_run', action='store_true',
                   help='do everything but send signals (logged at most once a second)')
    g.add_argument('--proc', metavar='DIR', default='/proc',
                   help='read processes and memory from DIR (e.g. a host /proc mounted in '
                        'a container)')
    g.add_argument('--sys', dest='sys_fs', metavar='DIR', default='/sys',
                   help='sysfs root for cgroup discovery (default /sys)')
    g.add_argument('-h', '--help', action='help', help='show this manual and exit')
    g.add_argument('--version', action='version', version='%s %s' % (PROG, __version__))
    return parser


def _wrap(text, width):
    """Return text split into lines of at most width characters (textwrap, minus its import)."""
    lines, line = [], ''
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = line + ' ' + word if line else word
    return lines + [line] if line else lines


def parse_settings(argv):
    """Return Settings from argv; raise UsageError (or SystemExit for --help/--version)."""
    args = build_parser().parse_args(argv)
    s = Settings()
    if args.mem_min is not None:
        s.mem_percent = args.mem_min
    if args.swap_min is not None:
        s.swap_percent = args.swap_min
    s.mem_size_kib = args.mem_min_size
    s.swap_size_kib = args.swap_min_size
    if args.mem_min_size is not None and args.mem_min is None:
        s.mem_percent = (100.0, 100.0)   # the size alone decides, as in earlyoom
    if args.swap_min_size is not None and args.swap_min is None:
        s.swap_percent = (100.0, 100.0)
    s.psi_avg10 = args.psi
    s.psi_mem_max_percent = args.psi_mem_max
    s.cgroup = args.cgroup
    s.unkillables = tuple(g for value in args.unkillables for g in value.split('|') if g)
    s.ignore_re, s.prefer_re, s.avoid_re = args.ignore, args.prefer, args.avoid
    s.ignore_root_user = args.ignore_root_user
    s.default_unkillables = not args.no_default_unkillables
    s.match = args.match
    s.sort_by_rss = args.sort_by_rss
    s.kill_pgroup = args.kill_pgroup
    s.list = args.list
    s.notify = args.notify
    s.notify_title = args.notify_title or DEFAULT_NOTIFY_TITLE
    s.notify_body = args.notify_body or DEFAULT_NOTIFY_BODY
    s.warn_percent = args.warn
    s.exec_after, s.exec_before = args.exec_after, args.exec_before
    s.daemon = not args.no_daemon
    s.pidfile = args.pidfile and os.path.abspath(args.pidfile)
    s.log_file = args.log_file and os.path.abspath(args.log_file)
    s.syslog = args.syslog
    s.verbose = args.verbose
    s.report_interval_s = args.report_interval
    s.dry_run = args.dry_run
    # Absolute: a daemon changes to / before it reads them.
    s.proc = os.path.abspath(args.proc)
    s.sys_fs = os.path.abspath(args.sys_fs)
    if s.log_file and s.syslog:
        raise UsageError('--log-file and --syslog: choose one log destination')
    if (args.notify_title or args.notify_body) and not s.notify:
        raise UsageError('--notify-title/--notify-body only apply with --notify; add --notify')
    return s


# ============================================================================
# main
# ============================================================================

def build_sensor(settings, calls, log):
    """Return the sensor for the settings (machine or cgroup); UsageError for a bad --cgroup."""
    machine = MachineSensor(settings.proc, calls, log)
    if settings.cgroup is None:
        return machine
    try:
        path, version = resolve_cgroup(settings.cgroup, settings.proc, settings.sys_fs)
    except ValueError as exc:
        raise UsageError('argument --cgroup: %s' % exc)
    sensor = CgroupSensor(path, version, machine, log)
    if read_int(sensor.usage_path) is None:
        raise UsageError('argument --cgroup: cannot read %s; give a cgroup bustd may read '
                         '(run as root?)' % sensor.usage_path)
    return sensor


def choose_log_sink(settings):
    """Return the sink: --log-file, --syslog, stderr (foreground), else syslog or the default file."""
    if settings.log_file:
        return FileSink(settings.log_file)
    if settings.syslog or (settings.daemon and _is_socket('/dev/log')):
        return SyslogSink('/dev/log')
    if settings.daemon:
        return FileSink(DEFAULT_LOG_FILE)
    return StderrSink()


def _is_socket(path):
    import stat as stat_module
    try:
        return stat_module.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def startup_lines(settings, sensor, th, calls, features):
    """Return the effective configuration, as logged at start-up."""
    s = settings
    lines = ['bustd %s (Python %s), pid %d, watching %s' % (
        __version__, sys.version.split()[0], os.getpid(), sensor.describe())]
    swap = format_kib(th.swap_total_kib) if th.swap_total_kib else 'none'
    lines.append('memory %s, swap %s' % (format_kib(th.mem_total_kib), swap))
    for name, mem_kib, swap_kib in (('SIGTERM', th.mem_term_kib, th.swap_term_kib),
                                    ('SIGKILL', th.mem_kill_kib, th.swap_kill_kib)):
        lines.append('%s when available memory <= %.1f%% (%s) and %s' % (
            name, percent_of(mem_kib, th.mem_total_kib), format_kib(mem_kib),
            'free swap <= %.1f%% (%s)' % (percent_of(swap_kib, th.swap_total_kib),
                                          format_kib(swap_kib))
            if th.swap_total_kib else 'swap is low (none configured)'))
    if th.psi_avg10 is not None:
        lines.append('PSI rule: SIGTERM when memory some avg10 >= %g while available '
                     'memory <= %g%% (%s)' % (th.psi_avg10, s.psi_mem_max_percent,
                                              format_kib(th.psi_mem_max_kib)))
    else:
        lines.append('PSI rule: off (%s)' % ('--psi off' if sensor.has_psi else 'no PSI here'))
    lines.append('polling: adaptive %d..%d ms, %s; wake-ups: %s' % (
        POLL_FLOOR_S * 1000, POLL_CEILING_S * 1000,
        features.get('fill', FillModel().describe()), features.get('wakeups', 'signals only')))
    lines.append('kernel features: sysinfo %s, MemAvailable %s, PSI %s, pidfd %s, '
                 'process_mrelease %s, ctypes %s' % tuple(_yes(x) for x in (
                     sensor.uses_sysinfo, sensor.has_mem_available, sensor.has_psi,
                     calls.pidfd_open is not None, calls.process_mrelease is not None,
                     calls.has_ctypes)))
    lines.append('self-protection: oom_score_adj -1000 %s, mlockall %s' % (
        _yes(features.get('oom_adj')), features.get('mlock', 'not tried')))
    victims = 'victims: %s' % ('largest RSS' if s.sort_by_rss else 'highest oom_score')
    if s.kill_pgroup:
        victims += ', whole process group (-g)'
    if s.match == 'cmdline':
        victims += '; patterns see the command line'
    lines.append(victims)
    protected = []
    if s.unkillables:
        protected.append('-u ' + '|'.join(s.unkillables))
    if s.ignore_re is not None:
        protected.append('--ignore ' + s.ignore_re.pattern)
    if s.ignore_root_user:
        protected.append('root-owned (--ignore-root-user)')
    if s.default_unkillables:
        protected.append('default: ' + ' '.join(DEFAULT_UNKILLABLES))
    lines.append('protected: ' + ('; '.join(protected) or 'nothing beyond the kernel rules'))
    if s.prefer_re is not None or s.avoid_re is not None:
        lines.append('preferences: prefer %s, avoid %s (+/-%d)' % (
            s.prefer_re and s.prefer_re.pattern, s.avoid_re and s.avoid_re.pattern,
            PREFER_ADJUST))
    if s.notify or s.exec_after or s.exec_before or s.warn_percent is not None:
        lines.append('telling: notify %s, warn %s, -P %s, -N %s' % (
            _yes(s.notify), '%g%%' % s.warn_percent if s.warn_percent is not None else 'off',
            s.exec_before or 'none', s.exec_after or 'none'))
    if s.report_interval_s:
        lines.append('reporting memory every %g s' % s.report_interval_s)
    if s.dry_run:
        lines.append('DRY RUN: no signal will be sent')
    return lines


def _yes(value):
    return 'yes' if value else 'no'


def _stderr(message):
    try:
        os.write(2, ('%s: %s\n' % (PROG, message)).encode('utf-8', 'replace'))
    except OSError:
        pass


def main(argv=None):
    """Run bustd with argv (default sys.argv[1:]) in this interpreter; return the exit status."""
    settings, status = parse_or_status(sys.argv[1:] if argv is None else argv)
    if settings is None:
        return status
    return start(settings)


def parse_or_status(argv):
    """Return (Settings, None), or (None, exit status) after --help, --version or an error."""
    try:
        return parse_settings(argv), None
    except UsageError as exc:
        _stderr('%s (see %s --help)' % (exc, PROG))
        return None, EXIT_USAGE
    except SystemExit as exc:   # --help, --version
        return None, exc.code or 0


def start(settings):
    """Run with parsed settings; return the exit status (1: environment, 2: usage)."""
    if not sys.platform.startswith('linux'):
        _stderr('bustd runs on Linux only (this is %s)' % sys.platform)
        return EXIT_ENV
    try:
        return run(settings)
    except UsageError as exc:
        _stderr('%s (see %s --help)' % (exc, PROG))
        return EXIT_USAGE
    except EnvironmentProblem as exc:
        _stderr(str(exc))
        return EXIT_ENV


def run(settings, environ=None):
    """Set up and run the daemon for settings; return the exit status."""
    environ = os.environ if environ is None else environ
    calls = load_kernel_calls()
    log = Log(StderrSink(environ=environ), settings.verbose)
    sensor = build_sensor(settings, calls, log)
    warnings = sensor.check()
    if not sensor.has_psi:
        settings.psi_avg10 = None   # the rule is off: it must not widen the exact-read band
    first = sensor.read_exact(Reading())
    if not first.exact or first.mem_total_kib <= 0:
        raise EnvironmentProblem('no usable memory reading from %s' % sensor.describe())
    check_levels(settings, compute_thresholds(settings, first.mem_total_kib,
                                              first.swap_total_kib))
    caps = capabilities()
    only_uid = None if has_cap(caps, CAP_KILL) else os.geteuid()
    policy = Policy(settings, only_uid)
    if settings.list:
        processes = scan_processes(settings.proc, policy, sensor.member_pids())
        print(format_table(processes, settings.sort_by_rss, user_name_function()))
        return EXIT_OK
    if settings.pidfile:
        check_pidfile(settings.pidfile)
    try:
        sink = choose_log_sink(settings)
    except OSError as exc:
        raise EnvironmentProblem('cannot open the log file %s (%s); give --log-file PATH '
                                 'or -n' % (exc.filename, exc.strerror))
    report_fd = None
    if settings.daemon:
        result = daemonize()
        if isinstance(result, str):   # the original process
            if not result:
                _stderr('the daemon exited during start-up; see %s' % sink.describe())
                return EXIT_ENV
            print('%s: running as pid %s, logging to %s' % (PROG, result, sink.describe()))
            return EXIT_OK
        report_fd = result
    log.sink = sink
    try:
        if settings.pidfile:
            write_pidfile(settings.pidfile)
        return serve(settings, sensor, policy, calls, caps, log, warnings, environ, report_fd)
    except (EnvironmentProblem, OSError) as exc:
        log.error('cannot run: %s' % exc)   # stderr may be /dev/null by now
        return EXIT_ENV
    finally:
        remove_pidfile(settings.pidfile)


def serve(settings, sensor, policy, calls, caps, log, warnings, environ, report_fd=None):
    """Protect the daemon, start the loop, tell the service manager; return the exit status."""
    for warning in warnings:
        log.warning(warning)
    if calls.missing:
        log.warning('running without ' + '; '.join(calls.missing))
    if policy.only_uid is not None:
        log.warning('no CAP_KILL (not root?): only processes of uid %d can be killed'
                    % policy.only_uid)
    features = {'oom_adj': protect_self('/proc', log)}
    helpers = Helpers(log)
    notifier = Notifier(settings, helpers, log, user_name_function(), environ)
    service = ServiceManager(environ)
    waiter = Waiter()
    daemon = Daemon(settings, sensor, policy, calls, log, notifier, helpers, service,
                    sleep=waiter, far_sleep=waiter)
    waiter.add(install_signal_handlers(daemon.flags), waiter.select.POLLIN, 'signal')
    waiter.watch_signals_far((signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1))
    daemon.start()
    wakeups = []
    psi_fd, psi_how = open_psi_trigger(sensor.psi_path if getattr(sensor, 'has_psi', False)
                                       else None)
    if psi_fd is not None:
        waiter.add(psi_fd, waiter.select.POLLPRI, 'psi', drain=False)
        wakeups.append('PSI trigger "%s"' % psi_how)
    else:
        wakeups.append('PSI trigger off (%s)' % psi_how)
    event_fds = []

    def register_event(th):
        # cgroup v1: wake when usage crosses into the range that needs exact readings.
        for fd in event_fds:
            waiter.poller.unregister(fd)
            os.close(fd)
        del event_fds[:]
        fd = sensor.threshold_event_fd(calls, th)
        if fd is not None:
            event_fds.append(fd)
            waiter.add(fd, waiter.select.POLLIN, 'cgroup threshold', far=True)
    register_event(daemon.th)
    daemon.event_fd_hook = register_event
    if event_fds:
        wakeups.append('cgroup usage threshold event')
    features['wakeups'] = ', '.join(wakeups)
    # Touch every page the kill path needs before locking (ONFAULT locks only those).
    victim, skipped = find_victim(settings.proc, policy, sensor.member_pids())
    if victim is not None:
        describe_victim(victim, skipped, settings.sort_by_rss)
        kill_line(signal.SIGTERM, victim, describe_trigger(daemon.reading, daemon.th))
    del victim, skipped
    # Calibrate while memory may still be returned: after mlockall it could not.
    daemon.fill = FillModel(calibrate_fill_kib_s(), available_cpus())
    features['fill'] = daemon.fill.describe()
    release_startup_memory(calls)
    features['mlock'] = lock_memory(calls, caps, log)
    for line in startup_lines(settings, sensor, daemon.th, calls, features):
        log.info(line)
    log.info('ready: watching (SIGUSR1 logs a status, SIGTERM stops)')
    service.notify('READY=1\nSTATUS=watching: %s\nMAINPID=%d' % (
        describe_levels(daemon.th), os.getpid()))
    if report_fd is not None:
        os.write(report_fd, str(os.getpid()).encode())
        os.close(report_fd)
    return daemon.run()


# As a program, bustd.py parses its command line, then replaces itself (same
# pid) with a fresh `python3 -I -S` that receives the compiled code and the
# settings through a memfd.  The daemon thus never holds argparse, nor the
# ~5 MiB syntax tree CPython keeps for a running script, nor the compiler's
# leftovers: 3-4 MiB less RSS.  -I -S also keep PYTHON* variables, user
# site-packages and .pth hooks out of a root daemon.
LOADER = ("import marshal, os, sys; f = os.fdopen(int(sys.argv[1]), 'rb'); "
          "code, settings = marshal.load(f); f.close(); "
          "g = {'__name__': '__bustd__', '__file__': sys.argv[2]}; exec(code, g); "
          "sys.exit(g['start'](g['Settings'].from_dict(settings)))")


def relaunch(settings, code, argv):
    """exec the isolated daemon interpreter; return only if that cannot be done here."""
    memfd_create = _memfd_create_function()
    if not sys.executable or code is None or memfd_create is None:
        return
    import marshal
    try:
        fd = memfd_create('bustd-code')
        os.write(fd, marshal.dumps((code, settings.to_dict())))
        os.lseek(fd, 0, os.SEEK_SET)
        os.set_inheritable(fd, True)
        # argv is passed on unused, so that ps and pgrep show the real command.
        os.execv(sys.executable, [sys.executable, '-I', '-S', '-c', LOADER, str(fd),
                                  os.path.abspath(__file__)] + argv)
    except (OSError, ValueError):
        pass   # run in this interpreter, at some RSS cost


def _memfd_create_function():
    """Return memfd_create(name) -> fd: os's (Python 3.8), else glibc's via ctypes, or None."""
    memfd_create = getattr(os, 'memfd_create', None)
    if memfd_create is not None:
        return lambda name: memfd_create(name, 0)
    try:
        import ctypes
        call = _bind_libc_call(ctypes, ctypes.CDLL(None, use_errno=True), 'memfd_create')
    except (ImportError, OSError):
        return None
    if call is None:   # glibc < 2.27, musl < 1.1.20
        return None
    return lambda name: call(name.encode(), 0)


def launch(argv, code=None):
    """The program's entry point: parse argv, then relaunch isolated and run."""
    settings, status = parse_or_status(argv)
    if settings is None:
        return status
    if not settings.list:
        relaunch(settings, code, argv)
    return start(settings)


if __name__ == '__main__':
    # The code object of this very module, to hand over without recompiling.
    sys.exit(launch(sys.argv[1:], getattr(sys, '_getframe', lambda: None)().f_code
                    if hasattr(sys, '_getframe') else None))
