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
  SIGTERM  also when tasks stalled on memory (PSI "full" total=) for 8 s
           within 30 s while anonymous memory, in RAM or swap, kept growing
           toward exhausting RAM and swap (zram counted at its real RAM
           cost): thrashing that a large swap hides, told from a burst that
           swap absorbs (it stops growing).  Without swap, PSI "some" avg10
           >= 25 while MemAvailable <= 15 % does that job.
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
  process_mrelease since 5.15: each one missing costs a feature, never the
  daemon; the start-up lines say which are there), Python 3.6 or newer, only
  the standard library; it even runs without ctypes.  Root to kill other
  users' processes.

Install: copy this one file anywhere and run `python3 bustd.py --install` as
root: it copies itself to /usr/local/sbin/bustd and starts at boot and now
under systemd, OpenRC, runit or BusyBox init.  `bustd.py --help` is the manual.
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

__version__ = '1.1.0'
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

# The thrashing rule: SIGTERM once tasks were all stalled on memory (PSI
# "full") for DEFAULT_THRASH_STALL_MS within the last THRASH_WINDOW_S, counting
# only the time when anonymous memory (in RAM or swap) grew fast enough to
# exhaust RAM and swap within the horizon.  A burst stops growing and stops
# counting; a leak keeps both going.  In the lab (qemu, stock Debian 6.1
# kernel, 1 GiB guest, zram swap) a healthy 850 MB burst, slowed by its own
# stall, stalled up to about 7 s while still growing: the budget is above
# that (see the README).
DEFAULT_THRASH_STALL_MS = 8000
DEFAULT_THRASH_HORIZON_S = 60.0
THRASH_WINDOW_S = 30.0
THRASH_GROWTH_WINDOW_S = 0.5   # growth is measured over this long (and lags by it)
THRASH_POLL_S = 0.1            # poll at least this often while tasks stall on memory
THRASH_SAMPLE_S = 0.05         # keep at most one sample per this long (600 per window)

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
CALIBRATE_TIMEOUT_S = 5.0   # a calibration stuck in reclaim is abandoned: the cap is used
CALIBRATE_REAP_S = 0.5      # then a SIGKILLed child is waited for this long, at most
SELF_FD_DIR = '/proc/self/fd'   # the calibration child closes what this lists
CLOSE_FDS_MAX = 65536           # or, unlisted, every fd below this
FILL_SAFETY = 1.5
FILL_FLOOR_KIB_S = 512 * 1024
FILL_CAP_KIB_S = 8 * 1024 * 1024
LEARNED_FORGET_S = 10.0   # a learned rate is kept this long after it was last seen
# Idle wake-ups (readings far from every level) run a short loop: one
# poll(2), one cheap reading, the schedule; the full step at least this
# often, and sooner when a report or the metrics file is due (the watchdog
# bounds it too).  Far from every level no rule can fire and the full step
# reads cheaply too, so there it adds nothing but its cost.
IDLE_STEP_EVERY_S = POLL_CEILING_S

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
# A group or cgroup kill holds at most this many pidfds (and at most a quarter
# of the open-file limit); further members are checked by start time before
# each signal.  A fork bomb's thousands would otherwise fill bustd's fd table
# (1024 under systemd): every /proc read of the kill wait fails (blind), and
# members past the limit are never signalled.
PIDFDS_HELD_MAX = 256
NO_VICTIM_RETRY_S = 1.0  # back-off when nothing may be killed
# After a kill, watch memory come back for at most this long before choosing
# again: an exit frees its memory before its pidfd polls readable, so this
# only waits when memory does not come back (tmpfs, shm, a kernel leak), and
# then it keeps one kill from following the next in milliseconds.
SETTLE_S = 0.5
# At most this many kills at the SIGTERM level per KILL_CAP_WINDOW_S; the
# SIGKILL level is never capped (the kernel's OOM killer would act next).
KILLS_PER_WINDOW = 3
KILL_CAP_WINDOW_S = 60.0
# A victim that outlived SIGKILL (D state, frozen cgroup) is passed over
# this long; one that could not even be opened (EMFILE, EINVAL) this long.
UNKILLABLE_RETRY_S = 600.0
UNOPENABLE_RETRY_S = 60.0
DRY_RUN_LOG_EVERY_S = 1.0
PREFER_ADJUST = 300     # --prefer / --avoid shift of oom_score (earlyoom's)

# Helpers (notifications and hooks).
HELPER_TIMEOUT_S = 10.0      # then the helper's process group is killed
BEFORE_HOOK_BUDGET_S = 2.0   # -P: the kill waits at most this long
WARN_EVERY_S = 60.0          # --warn: at most one warning per minute
THROTTLE_S = 60.0            # each repeated warning: at most one line per minute

# --metrics-file: rewritten at least this often, so a stale file means a dead
# bustd; a failing write is logged at most once per METRICS_WARN_EVERY_S.
METRICS_EVERY_S = 60.0
METRICS_WARN_EVERY_S = 3600.0

# PSI trigger: wake when tasks stall on memory for 150 ms within 1 s.
# Unprivileged writers may only use windows that are multiples of 2 s.
PSI_TRIGGERS = (b'some 150000 1000000', b'some 300000 2000000')

# /proc/PID/stat flags (include/linux/sched.h).
PF_EXITING = 0x00000004
PF_KTHREAD = 0x00200000

# The kernel's ceiling for pid_max (PID_MAX_LIMIT on 64-bit): a tree without
# sys/kernel/pid_max is bounded by it.
PID_MAX_LIMIT = 4 * 1024 * 1024
# The initial PID namespace's inode number (PROC_PID_INIT_INO, Linux 3.8+).
INIT_PID_NS_INODE = 0xEFFFFFFC
# What the admin's patterns see of a command line, at most: a hostile process
# controls its command line, and a backtracking pattern costs its length.
PATTERN_TEXT_MAX = 1024
# ...and at most this much CPU time per regex match on a command line: past
# it the match counts as "no match" (one warning), so that a backtracking
# --ignore/--prefer/--avoid cannot blind bustd.  Names (15 characters) are
# too short to need it.
PATTERN_CPU_S = 0.05
# A cgroup path in a log line, at most (users name the cgroups of their
# delegated subtree: spaces, quotes and control characters included).
PATH_TEXT_MAX = 1024
# The default protected list protects a matching process only when it runs
# as a system user (uid below this, login.defs' UID_MIN), or when its
# executable is a root-owned file of that name: any user can rename a process.
FIRST_USER_UID = 1000
# Filesystems whose pressure files take PSI triggers.
PSI_FILESYSTEMS = ('proc', 'cgroup2', 'cgroup')

# Capabilities (include/uapi/linux/capability.h).
CAP_KILL = 5
CAP_IPC_LOCK = 14

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


def load_kernel_calls():
    """Return a KernelCalls with everything this kernel and Python offer."""
    calls = KernelCalls()
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
        # < 20 digits: no kernel figure is longer, and int() of thousands is a ValueError.
        if parts and parts[0].isdigit() and len(parts[0]) < 20:
            fields[name.strip().decode('ascii', 'replace')] = int(parts[0])
    return fields


# What a meminfo must have to be read at all (plus MemAvailable or MemFree).
MEMINFO_NEEDED = ('MemTotal', 'SwapTotal', 'SwapFree')


def available_kib(meminfo):
    """Return MemAvailable in KiB, estimated on kernels older than 3.14; None if unknown."""
    if 'MemAvailable' in meminfo:
        return meminfo['MemAvailable']
    if 'MemFree' not in meminfo:
        return None     # unknown is not zero: zero would mean SIGKILL
    get = meminfo.get
    return max(0, get('MemFree', 0) + get('Cached', 0) + get('Buffers', 0)
               - get('Shmem', 0))


def anon_in_ram_kib(fields, anon, shmem, swap_cached, per_kib=1):
    """Return anon + shmem - swap cache from meminfo or memory.stat fields (None: no anon).

    Pages in the swap cache are in RAM and in swap at once: counted once.
    """
    if anon not in fields:
        return None
    return max(0, (fields[anon] + fields.get(shmem, 0) - fields.get(swap_cached, 0))
               // per_kib)


def parse_psi(data):
    """Return (some_avg10, full_avg10) from a PSI file, None for what is absent.

    avg10 is a percentage of time: a figure outside 0..100 (inf, nan, 1e9)
    is garbage and read as absent.
    """
    some = full = None
    for line in data.split(b'\n'):
        kind, _, rest = line.partition(b' ')
        for item in rest.split():
            if item.startswith(b'avg10='):
                try:
                    value = float(item[6:])
                except ValueError:
                    break
                if not 0.0 <= value <= 100.0:     # also nan
                    break
                if kind == b'some':
                    some = value
                elif kind == b'full':
                    full = value
                break
    return some, full


def parse_psi_total_us(data, kind=b'full'):
    """Return the `total=` stall time in microseconds of one PSI line ('some' or 'full').

    None when the line or the number is absent or not a plain count: the
    caller then has no stall figure, never a zero one.
    """
    for line in data.split(b'\n'):
        if not line.startswith(kind + b' '):
            continue
        for item in line.split():
            if item.startswith(b'total='):
                value = item[6:]
                return int(value) if value.isdigit() and len(value) < 20 else None
        return None
    return None


def parse_zram_mm_stat(data):
    """Return (stored_kib, ram_kib) from a zram mm_stat: data swapped in, RAM it takes.

    mm_stat: orig_data_size compr_data_size mem_used_total ... in bytes
    (Documentation/admin-guide/blockdev/zram.rst).  None when malformed.
    """
    fields = data.split()
    if len(fields) < 3 or not (fields[0].isdigit() and fields[2].isdigit()):
        return None
    return int(fields[0]) // 1024, int(fields[2]) // 1024


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
        elif words[0] == b'managed' and len(words) == 2 and words[1].isdigit():
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

    def __init__(self, pid, name, state, ppid, pgrp, session, flags, starttime, rss_pages):
        self.pid = pid
        self.name = name
        self.state = state
        self.ppid = ppid
        self.pgrp = pgrp
        self.session = session
        self.flags = flags
        self.starttime = starttime
        self.rss_pages = rss_pages


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
    # A kernel number has at most 20 characters; a longer one (a hostile --proc
    # tree) would overflow the floats that sizes are printed with.
    if len(fields) < 22 or open_paren > 21 or any(
            len(fields[i]) > 20 for i in (1, 2, 3, 6, 19, 21)):
        return None
    try:
        return ProcStat(
            pid=int(data[:open_paren]),
            name=data[open_paren + 1:close_paren].decode('utf-8', 'replace'),
            state=fields[0].decode('ascii', 'replace'),
            ppid=int(fields[1]),
            pgrp=int(fields[2]),
            session=int(fields[3]),
            flags=int(fields[6]),
            starttime=int(fields[19]),    # field 22: clock ticks after boot
            rss_pages=int(fields[21]))    # field 24
    except ValueError:
        return None


def parse_status_uids(status_text):
    """Return (real, effective) uid from /proc/PID/status text, or None.

    Unlike the owner of /proc/PID (root for any non-dumpable process),
    these are the process's own credentials.
    """
    for line in status_text.split('\n'):
        if line.startswith('Uid:'):
            words = line.split()
            if len(words) >= 3 and is_number_name(words[1]) and is_number_name(words[2]):
                return int(words[1]), int(words[2])
            return None
    return None


def is_number_name(name):
    """Return True for a non-empty run of ASCII digits ('²'.isdigit() is True too)."""
    return bool(name) and name.strip('0123456789') == ''


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
    if not first.strip() or (sep and (not second.strip() or ',' in second)):
        raise ValueError('%r is not TERM or TERM,KILL; give one or two values, e.g. 10,5'
                         % text)
    term = parse_one(first)
    kill = parse_one(second) if sep else term / 2
    if kill > term:
        raise ValueError('the SIGKILL level %s is above the SIGTERM level %s; '
                         'give TERM,KILL with KILL <= TERM (e.g. 10,5)'
                         % (second, first))
    return term, kill


def printable(text, limit=200):
    """Return text safe for one log line: truncated; control characters, quotes and
    backslashes escaped, so a name cannot forge a field of a key="value" line."""
    if len(text) > limit:
        text = text[:limit] + '...'
    if text.isprintable() and '"' not in text and '\\' not in text:
        return text
    return ''.join(c if c.isprintable() and c not in '"\\' else
                   '\\' + c if c in '"\\' else '\\x%02x' % ord(c) for c in text)


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
    every process of every scan.  O_NONBLOCK (ignored by /proc and /sys): a
    FIFO in a --proc tree reads as empty instead of hanging bustd.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
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
    every process of a victim scan.  O_NONBLOCK: as read_file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
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
    stall_total_us is PSI's "full" total= counter (None: unread or absent);
    anon_kib is anonymous and shared memory in RAM that swap does not also
    hold (AnonPages + Shmem - SwapCached; None: unknown); zram_stored_kib /
    zram_ram_kib are what zram holds and the RAM that costs (0: no zram).
    """
    __slots__ = ('mem_total_kib', 'mem_free_kib', 'mem_available_kib',
                 'swap_total_kib', 'swap_free_kib', 'anon_kib', 'psi_some_avg10',
                 'psi_full_avg10', 'stall_total_us', 'zram_stored_kib', 'zram_ram_kib',
                 'exact')

    def __init__(self):
        self.mem_total_kib = self.mem_free_kib = self.mem_available_kib = 0
        self.swap_total_kib = self.swap_free_kib = 0
        self.anon_kib = None
        self.psi_some_avg10 = self.psi_full_avg10 = self.stall_total_us = None
        self.zram_stored_kib = self.zram_ram_kib = 0
        self.exact = False

    def forget_pressure(self):
        """Drop the PSI figures: a cheap reading has none."""
        self.psi_some_avg10 = self.psi_full_avg10 = self.stall_total_us = None


class EnvironmentProblem(Exception):
    """The machine cannot be watched (exit status 1); the message says why and what to do."""


def check_pid_namespace(proc):
    """Raise EnvironmentProblem if `proc` numbers processes differently from kill(2).

    A host's /proc mounted in a container (--proc) lists host pids, which
    pidfd_open and kill would take as the container's: another process, or
    bustd itself.  A child namespace's procfs (/proc/PID/root/proc) has a
    "self" that does not resolve at all for bustd.  Only a tree without
    a "self" symlink (a test's) is taken as it is; its pids are checked in bustd's own
    /proc before any signal (identity_root).
    """
    if not os.path.islink(proc + '/self'):
        return      # a test's tree; procfs's "self" is a symlink even where it dangles
    try:
        seen = os.readlink(proc + '/self')
    except OSError:
        seen = 'not bustd (it does not resolve)'
    if seen != str(os.getpid()):
        raise EnvironmentProblem(
            '%s/self is %s but bustd is pid %d: %s belongs to another PID namespace; '
            'run bustd in the namespace of the processes it may kill (e.g. --pid=host)'
            % (proc, seen if is_number_name(seen) else seen.join('()'), os.getpid(), proc))


def identity_root(proc):
    """Return the procfs in which a pid means what kill(2) and pidfd_open take it to mean.

    `proc` itself when its "self" is bustd, else /proc: a victim's start
    time is checked there before every signal, so a pid read from any other
    tree (a test's) can never hit a process bustd did not see.
    """
    try:
        if os.readlink(proc + '/self') == str(os.getpid()):
            return proc
    except OSError:
        pass
    return '/proc'


def read_pid_max(proc):
    """Return the largest pid of this tree (sys/kernel/pid_max, else the kernel's ceiling)."""
    value = read_int(proc + '/sys/kernel/pid_max')
    if value is None or not 0 < value <= PID_MAX_LIMIT:
        return PID_MAX_LIMIT
    return value


def in_initial_pid_namespace(proc='/proc'):
    """Return True/False whether bustd's PID namespace is the machine's, None if unknown."""
    try:
        return os.stat(proc + '/self/ns/pid').st_ino == INIT_PID_NS_INODE
    except OSError:
        return None


def checked_psi_avg10(data, log, path):
    """Return (some_avg10, full_avg10) of PSI file data; garbage costs one warning, not a decision."""
    some, full = parse_psi(data)
    if some is None and data and log is not None:
        log.warn_once('psi:' + path, 'ignoring %s: no "some avg10" between 0 and 100 in %r'
                      % (path, printable(data.decode('utf-8', 'replace'), 80)))
    return some, full


class Sensor(object):
    """What the loop reads memory through; MachineSensor and CgroupSensor fill it in.

    read(reading, th) takes the sensor's cheap figure (cheap_room_kib, a
    lower bound of available memory, or None) and stops there while it is
    above every level (reading.exact False); otherwise, and always in
    read_exact(reading, th=None), it reads exactly: memory and swap
    (read_memory, per sensor), then PSI and zram (here, the same for both).
    th=None asks for every figure.  psi_path/has_psi name the pressure file
    for the PSI trigger; member_pids() says who may be killed (None:
    anyone); threshold_event_fd() gives an fd that wakes the loop, or None;
    kind ('machine' or 'cgroup') labels the metrics.
    """
    psi_path = None
    has_psi = False
    uses_sysinfo = False
    has_mem_available = True
    zram_paths = ()

    def read(self, reading, th):
        """Fill `reading`; exact only when the cheap figure is near th.trigger_kib."""
        lower = self.cheap_room_kib(reading, th)
        if lower is not None and lower > th.trigger_kib:
            reading.mem_available_kib = lower
            reading.exact = False
            reading.forget_pressure()
            return reading
        return self.read_exact(reading, th)

    def read_exact(self, reading, th=None):
        """Fill `reading` exactly: memory, swap, PSI and zram."""
        self.read_memory(reading)
        self.read_pressure(reading, th)
        self.read_zram(reading)
        return reading

    def read_pressure(self, reading, th):
        """Fill the PSI figures, when PSI exists and a rule can use them.

        avg10 feeds the PSI rule, below th.psi_mem_max_kib only; the "full"
        total= counter feeds the thrashing rule, which measures its own windows.
        """
        reading.forget_pressure()
        want_avg10 = th is None or reading.mem_available_kib <= th.psi_mem_max_kib
        want_total = th is None or th.thrash_stall_ms is not None
        if not self.has_psi or not (want_avg10 or want_total):
            return
        data = read_small(self.psi_path, 512) or b''    # one read serves both rules
        if want_avg10:
            reading.psi_some_avg10, reading.psi_full_avg10 = checked_psi_avg10(
                data, self.log, self.psi_path)
        if want_total:
            reading.stall_total_us = parse_psi_total_us(data)

    def read_zram(self, reading):
        """Fill the zram figures: what zram swap holds, and the RAM that really costs."""
        stored = ram = 0
        for path in self.zram_paths:
            figures = parse_zram_mm_stat(read_small(path, 512) or b'')
            if figures is not None:
                stored += figures[0]
                ram += figures[1]
        reading.zram_stored_kib, reading.zram_ram_kib = stored, ram

    def cheap_room_kib(self, reading, th):
        """Return a cheap lower bound of available memory (filling totals), or None."""
        return None

    def member_pids(self):
        """Return the set of pids that may be killed (None: every process)."""
        return None

    def threshold_event_fd(self, calls, th):
        """Return an fd that polls readable when usage crosses a level (None here)."""
        return None


def find_zram_swaps(proc, sys_fs):
    """Return the mm_stat paths of the zram devices that are swap (/proc/swaps)."""
    paths = []
    for line in (read_file(proc + '/swaps') or b'').split(b'\n')[1:]:
        device = (line.split() or [b''])[0]
        name = os.path.basename(device.decode('utf-8', 'replace'))
        if device.startswith(b'/dev/zram') and name[4:].isdigit():
            paths.append('%s/block/%s/mm_stat' % (sys_fs, name))
    return tuple(paths)


class MachineSensor(Sensor):
    """Reads the whole machine's memory: sysinfo(2), /proc/meminfo, /proc/pressure/memory."""

    kind = 'machine'

    def __init__(self, proc='/proc', calls=None, log=None, sys_fs='/sys'):
        self.proc = proc
        self.sys_fs = sys_fs
        self.meminfo_path = proc + '/meminfo'
        self.psi_path = proc + '/pressure/memory'
        self.log = log
        # sysinfo describes the running kernel, which is what /proc describes
        # only when it is the real /proc (not a test's tree or a host's copy).
        self.sysinfo = calls.sysinfo if calls and proc == '/proc' else None
        self.reserve_kib = None
        self.next_reserve = 0.0
        self.mem_total_kib = 0
        self.sysinfo_differs = None    # why sysinfo(2) is not used, when it disagrees

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
        self.mem_total_kib = fields['MemTotal']
        if self.sysinfo is not None:
            # A /proc/meminfo bind-mounted over (lxcfs in LXD/Incus containers)
            # describes the container, sysinfo(2) the host: trust meminfo.
            host = Reading()
            self.sysinfo(host)
            if host.mem_total_kib != self.mem_total_kib:
                self.sysinfo_differs = 'sysinfo(2) says MemTotal %s, %s says %s' % (
                    format_kib(host.mem_total_kib), self.meminfo_path,
                    format_kib(self.mem_total_kib))
            else:
                self.read_reserve()
        self.zram_paths = find_zram_swaps(self.proc, self.sys_fs)
        # Polls start with the cheap sysinfo(2) reading only with both parts.
        self.uses_sysinfo = (self.sysinfo is not None and self.sysinfo_differs is None
                             and self.reserve_kib is not None)
        return warnings

    def read_reserve(self):
        """Set reserve_kib from /proc/zoneinfo (None if unreadable or absurd); again in a minute.

        The zram swaps are looked up again at the same time (swapon, swapoff).
        """
        self.next_reserve = time.monotonic() + 60
        zoneinfo = read_file(self.proc + '/zoneinfo', 1 << 20)
        if zoneinfo:
            page_kib = os.sysconf('SC_PAGE_SIZE') // 1024
            # Not doubled any more: the poll schedule plans with this bound, and
            # a doubled reserve (155 of 954 MiB on a 1 GiB box) halved every
            # idle sleep.  MemAvailable subtracts totalreserve_pages, set from
            # the high watermarks when they are set up (boot, sysctl writes);
            # zoneinfo's "high" adds any current boost, so this is no smaller.
            reserve = parse_zoneinfo_reserve_kib(zoneinfo, page_kib)
            if 0 <= reserve < self.mem_total_kib:
                self.reserve_kib = reserve
            else:   # a garbled zoneinfo: the cheap bound would be a lie
                self.reserve_kib = None
                if self.log is not None:
                    self.log.warn_once('reserve', 'ignoring %s/zoneinfo: a reserve of %s '
                                       'against %s of memory; reading %s on every poll'
                                       % (self.proc, format_kib(reserve),
                                          format_kib(self.mem_total_kib), self.meminfo_path))
        self.zram_paths = find_zram_swaps(self.proc, self.sys_fs)

    def describe(self):
        """Return what the readings come from, for the start-up lines."""
        if self.uses_sysinfo:
            fast = 'sysinfo(2), then %s near a threshold' % self.meminfo_path
        else:
            fast = '%s on every poll' % self.meminfo_path
            if self.sysinfo_differs:
                fast += ': %s' % self.sysinfo_differs
        return 'the whole machine (%s)' % fast

    def cheap_room_kib(self, reading, th):
        """Return sysinfo's MemFree - reserve (a lower bound of MemAvailable), or None."""
        if not self.uses_sysinfo:
            return None
        self.sysinfo(reading)
        if reading.mem_free_kib - self.reserve_kib > th.trigger_kib \
                and time.monotonic() >= self.next_reserve:
            self.read_reserve()    # vm.min_free_kbytes may have been raised since
        if self.reserve_kib is None:
            return None
        return reading.mem_free_kib - self.reserve_kib

    def read_memory(self, reading):
        """Fill memory and swap from /proc/meminfo."""
        data = read_file(self.meminfo_path)
        fields = parse_meminfo(data) if data else {}
        avail = available_kib(fields)
        if avail is not None and all(name in fields for name in MEMINFO_NEEDED):
            reading.mem_total_kib = fields['MemTotal']
            reading.mem_free_kib = fields.get('MemFree', avail)
            reading.mem_available_kib = avail
            reading.swap_total_kib = fields['SwapTotal']
            reading.swap_free_kib = fields['SwapFree']
            reading.anon_kib = anon_in_ram_kib(fields, 'AnonPages', 'Shmem', 'SwapCached')
            reading.exact = True
        else:   # unreadable or incomplete: keep the last figures, act on nothing new
            reading.exact = False
            if data and self.log is not None:
                self.log.warn_once('meminfo', 'ignoring %s: it lacks %s; deciding nothing '
                                   'until it has them' % (self.meminfo_path, ', '.join(
                                       n for n in MEMINFO_NEEDED + ('MemAvailable',)
                                       if n not in fields)))
        return reading


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


def mount_fs_type(mountinfo_text, path):
    """Return the filesystem type of the mount holding the absolute, resolved path ('' if none)."""
    best, fs_type = -1, ''
    for line in mountinfo_text.split('\n'):
        left, sep, right = line.partition(' - ')
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or not tail:
            continue
        mountpoint = _unescape_mount(fields[4])
        inside = path == mountpoint or path.startswith(mountpoint.rstrip('/') + '/')
        # The last of several mounts at the same point is the one on top.
        if inside and len(mountpoint) >= best:
            best, fs_type = len(mountpoint), tail[0]
    return fs_type


def _unescape_mount(field):
    """Return a mountinfo path with the kernel's octal escapes (\\040) undone."""
    if '\\' not in field:
        return field
    out, i = [], 0
    while i < len(field):
        digits = field[i + 1:i + 4]
        if field[i] == '\\' and len(digits) == 3 and digits.strip('01234567') == '':
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return ''.join(out)


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


def _cgroup_dir(mountpoint, root, inner):
    """Return the directory of cgroup `inner` (from /proc/PID/cgroup) under a mount of `root`."""
    if root != '/' and inner.startswith(root):
        inner = inner[len(root):]
    return os.path.normpath(mountpoint + '/' + inner.lstrip('/'))


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
                path = _cgroup_dir(mounts[key][0], mounts[key][1], own[key])
                if cgroup_version(path):
                    return path, cgroup_version(path)
        raise ValueError("found no memory cgroup of bustd's own in %s/self/cgroup; give "
                         '--cgroup PATH' % proc)
    # A relative name is a cgroup's, never a directory under the current one.
    candidates = [spec] if spec.startswith('/') else []
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


class CgroupSensor(Sensor):
    """Reads one cgroup's memory (v1 or v2): usage against its limit, minus file cache.

    "Available" is limit - usage + reclaimable page cache (active_file +
    inactive_file from memory.stat), the cgroup's analogue of MemAvailable.
    The cheap reading is limit - usage (it counts the cache as used, so it
    is a lower bound).  Without a limit the machine's figures are used.
    zram is not charged to cgroups: its RAM counts for the machine only.
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
        self.swap_limit_name = 'memory.swap.max' if v2 else 'memory.memsw.limit_in_bytes'
        self.usage_path = path + '/' + self.usage_name
        self.psi_path = path + '/memory.pressure' if v2 else None

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
        self.machine.read_memory(self.host)   # the host's RAM and swap
        levels = []
        for path in cgroup_lineage(self.path, self.limit_name):
            limit = read_cgroup_limit(path, self.limit_name)
            if limit is not None and limit // 1024 < self.host.mem_total_kib:
                levels.append((path, limit // 1024))
        limit_kib = min(kib for _, kib in levels) if levels else None
        if limit_kib != self.limit_kib and self.limits_read:
            self.log.info('cgroup %s: memory limit now %s' % (
                self.path, "none (using the machine's figures)" if limit_kib is None
                else format_kib(limit_kib)))
        self.limits_read = True
        self.levels = levels
        self.limit_kib = limit_kib
        swap = None
        for path in cgroup_lineage(self.path, self.swap_limit_name):
            room = read_cgroup_limit(path, self.swap_limit_name)
            if room is not None and self.version == 1:
                # memsw limits memory + swap: swap may hold what memory may not.
                room = max(0, room - (read_cgroup_limit(path, self.limit_name) or room))
            if room is not None:
                swap = room if swap is None else min(swap, room)
        swap_kib = self.host.swap_total_kib
        if swap is not None:
            swap_kib = min(swap_kib, swap // 1024)
        self.swap_limit_kib = swap_kib

    def cheap_room_kib(self, reading, th):
        """Return the least limit - usage of the limiting cgroups, or None (read exactly)."""
        self.refresh_limits()
        if self.limit_kib is None:
            return self.machine.cheap_room_kib(reading, th)
        lower = None
        for path, limit_kib in self.levels:
            usage = read_int(path + '/' + self.usage_name)
            if usage is None:
                return None
            room = limit_kib - usage // 1024
            lower = room if lower is None else min(lower, room)
        reading.mem_total_kib = self.limit_kib
        return lower

    def read_exact(self, reading, th=None):
        """Fill `reading` exactly: the cgroup's figures, or the machine's without a limit."""
        self.refresh_limits()
        if self.limit_kib is None:
            return self.machine.read_exact(reading, th)
        return Sensor.read_exact(self, reading, th)

    def read_memory(self, reading):
        """Fill memory from usage, limit and page cache of every limiting cgroup, and swap.

        Available memory is the least headroom of the limiting cgroups: a
        parent's limit is shared with this cgroup's siblings.
        """
        prefix = 'total_' if self.version == 1 else ''   # v1: hierarchical counters
        avail = free = None
        own_usage = own_stat = None
        for path, limit_kib in self.levels:
            usage = read_int(path + '/' + self.usage_name)
            if usage is None:
                reading.exact = False
                return reading
            stat = parse_meminfo(read_file(path + '/memory.stat') or b'')
            if path == self.path:
                own_usage, own_stat = usage, stat
            cache_kib = (stat.get(prefix + 'active_file', 0) +
                         stat.get(prefix + 'inactive_file', 0)) // 1024
            room = max(0, limit_kib - usage // 1024)
            free = room if free is None else min(free, room)
            level_avail = min(limit_kib, room + cache_kib)
            avail = level_avail if avail is None else min(avail, level_avail)
        if own_usage is None:
            own_usage = read_int(self.usage_path) or 0
            own_stat = parse_meminfo(read_file(self.path + '/memory.stat') or b'')
        reading.anon_kib = anon_in_ram_kib(own_stat, prefix + 'anon', prefix + 'shmem',
                                           prefix + 'swapcached', 1024)
        reading.mem_total_kib = self.limit_kib
        reading.mem_free_kib = free
        reading.mem_available_kib = avail
        reading.swap_total_kib = self.swap_limit_kib
        reading.swap_free_kib = self._swap_free_kib(own_usage)
        reading.exact = True
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
        pid_max = read_pid_max(self.machine.proc)
        for directory, _, _ in os.walk(self.path):
            data = read_file(directory + '/cgroup.procs', 1 << 22) or b''
            pids.update(pid for pid in (int(x) for x in data.split() if x.isdigit())
                        if 0 < pid <= pid_max)
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


def cgroup_lineage(path, name):
    """Yield path, then each ancestor, while the directory has the control file `name`.

    The one walk up a hierarchy: memory and swap limits of every level.
    The root cgroup of v2 has no memory.max, and the directory above a
    v1 hierarchy's root is no cgroup, so the walk stops there.
    """
    while os.path.exists(path + '/' + name):
        yield path
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


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


def close_fds_but(keep_fd, fd_dir=SELF_FD_DIR):
    """Close every open file descriptor of this (forked) process but keep_fd.

    The open ones are listed in fd_dir: closing every number up to the fd
    limit costs one close(2) per number on Pythons before 3.10, minutes
    with LimitNOFILE=infinity.  Without the listing, every number up to
    CLOSE_FDS_MAX.
    """
    try:
        fds = [int(name) for name in os.listdir(fd_dir) if name.isdigit()]
    except (OSError, ValueError):
        limit = os.sysconf('SC_OPEN_MAX')
        if limit < 0:      # "no limit"
            limit = CLOSE_FDS_MAX
        os.closerange(0, keep_fd)
        os.closerange(keep_fd + 1, max(keep_fd + 1, min(limit, CLOSE_FDS_MAX)))
        return
    for fd in fds:
        if fd != keep_fd:
            try:
                os.close(fd)
            except OSError:   # the listing's own descriptor, closed already
                pass


def calibrate_apart(calibrate=calibrate_fill_kib_s, timeout_s=CALIBRATE_TIMEOUT_S,
                    stop=lambda: False, warn=lambda text: None, leftover=lambda pid: None,
                    fd_dir=SELF_FD_DIR):
    """Return calibrate() as run in a forked child, or in this process if fork fails.

    The mmap module the calibration needs would stay mapped in the daemon
    for good (about 50 KiB of RSS, more than the rest of the calibration);
    a child maps it, faults its memory in and exits.  A child that has not
    answered within timeout_s (a start-up in the middle of a memory crisis),
    or when stop() turns true (SIGTERM), is killed, and the answer is None:
    the universal worst case.  warn(text) says why the calibration was not
    done as designed; leftover(pid) gets a killed child not yet reaped.
    """
    import select
    read_fd = write_fd = None
    try:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
    except OSError as exc:
        for fd in (read_fd, write_fd):
            if fd is not None:
                os.close(fd)
        warn('cannot fork for the fill-rate calibration (%s): calibrating in this process, '
             'which keeps the mmap module loaded' % exc.strerror)
        return calibrate()
    if pid == 0:      # the child: nothing of the parent's may run here (os._exit)
        try:
            signal.set_wakeup_fd(-1)       # the parent's pipe, the parent's handlers:
            # SIGTERM and SIGINT end the child (systemctl stop signals the whole unit);
            # SIGHUP and SIGUSR1, which never end the daemon (logrotate, a status
            # request to the unit), must not end its calibration either.
            for signum, action in ((signal.SIGTERM, signal.SIG_DFL),
                                   (signal.SIGINT, signal.SIG_DFL),
                                   (signal.SIGHUP, signal.SIG_IGN),
                                   (signal.SIGUSR1, signal.SIG_IGN)):
                signal.signal(signum, action)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, EARLY_SIGNALS + (signal.SIGTERM,))
            # Only its own pipe: a stuck child must not hold the daemon's (the pidfile's
            # lock, the pipe that tells the launching command the daemon is up).
            close_fds_but(write_fd, fd_dir)
            os.write(write_fd, repr(float(calibrate() or 0.0)).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    answer, why = None, None      # answer: all the child wrote, once it closed the pipe
    try:
        poller = select.poll()
        poller.register(read_fd, select.POLLIN)
        deadline = time.monotonic() + timeout_s
        chunks = []
        while not stop():
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                why = 'did not finish within %g s' % timeout_s
                break
            if poller.poll(min(left_s, 0.1) * 1000):   # 0.1 s: see stop() promptly
                chunk = os.read(read_fd, 64)
                if not chunk:
                    answer = b''.join(chunks)
                    break
                chunks.append(chunk)
    finally:
        os.close(read_fd)
        # A child that answered is exiting; one that did not (stuck, stopped, or a
        # stop) is killed.  Unreaped, the pid is still ours: never a reused one.
        done = _reap(pid, CALIBRATE_REAP_S if answer is not None else 0)[0]
        if not done:
            os.kill(pid, signal.SIGKILL)
            done = _reap(pid, CALIBRATE_REAP_S)[0]
        if not done:      # dying slowly (a large exit under pressure): the loop reaps it
            leftover(pid)
    if answer is not None:
        try:
            return float(answer) or None
        except ValueError:
            why = 'ended without an answer'
    if why is not None:
        warn('the fill-rate calibration %s: assuming the fastest fill' % why)
    return None


# ============================================================================
# Policy (when): pure functions of a reading and the thresholds
# ============================================================================

class Thresholds(object):
    """The decision levels in KiB, derived from settings and the totals they apply to.

    Built whole (compute_thresholds builds it from settings): a level left
    out is a TypeError, never a missing attribute in the middle of a poll.
    """
    __slots__ = ('mem_total_kib', 'swap_total_kib', 'mem_term_kib', 'mem_kill_kib',
                 'swap_term_kib', 'swap_kill_kib', 'psi_avg10', 'psi_mem_max_kib',
                 'warn_kib', 'thrash_stall_ms', 'thrash_horizon_s', 'trigger_kib',
                 'clamped')

    def __init__(self, mem_total_kib, swap_total_kib, mem_levels_kib, swap_levels_kib,
                 psi_avg10=None, psi_mem_max_kib=-1, warn_kib=-1, thrash_stall_ms=None,
                 thrash_horizon_s=DEFAULT_THRASH_HORIZON_S, clamped=False):
        self.mem_total_kib = mem_total_kib
        self.swap_total_kib = swap_total_kib
        self.mem_term_kib, self.mem_kill_kib = mem_levels_kib
        self.swap_term_kib, self.swap_kill_kib = swap_levels_kib
        self.psi_avg10 = psi_avg10
        self.psi_mem_max_kib = psi_mem_max_kib if psi_avg10 is not None else -1
        self.warn_kib = warn_kib
        self.thrash_stall_ms = thrash_stall_ms      # None: the thrashing rule is off
        self.thrash_horizon_s = thrash_horizon_s
        self.clamped = clamped
        # Below this the cheap reading is not enough and an exact one is taken.
        self.trigger_kib = max(self.mem_term_kib, self.psi_mem_max_kib, self.warn_kib)


def compute_thresholds(settings, mem_total_kib, swap_total_kib):
    """Return Thresholds for these totals.

    Where both a percentage (-m/-s) and a size (-M/-S) are given, the lower
    level is used, as earlyoom does ("-m 10 -M 1G": 10 %, but at most 1 GiB).
    """
    mem_levels = _levels_kib(settings.mem_percent, settings.mem_size_kib, mem_total_kib)
    # A SIGTERM level at or above the total would kill at once and forever
    # (say -M 2G against a cgroup limit lowered to 1G): use the defaults.
    clamped = mem_total_kib > 0 and mem_levels[0] >= mem_total_kib
    if clamped:
        mem_levels = _levels_kib(DEFAULT_MEM_PERCENT, None, mem_total_kib)
    warn_kib = -1
    if settings.warn_percent is not None:
        warn_kib = int(mem_total_kib * settings.warn_percent / 100)
    return Thresholds(
        mem_total_kib, swap_total_kib, mem_levels,
        _levels_kib(settings.swap_percent, settings.swap_size_kib, swap_total_kib),
        psi_avg10=settings.psi_avg10,
        psi_mem_max_kib=int(mem_total_kib * settings.psi_mem_max_percent / 100),
        warn_kib=warn_kib, thrash_stall_ms=settings.thrash_stall_ms,
        thrash_horizon_s=settings.thrash_horizon_s, clamped=clamped)


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


def demand_kib(reading):
    """Return the anonymous memory the workloads hold, in RAM or in swap (None: unknown).

    Growth of this figure is what runs a machine out of memory and swap;
    swapping out (a burst being absorbed) and evicting page cache move
    memory without growing it, and zram's own RAM is not in it.
    """
    if reading.anon_kib is None:
        return None
    return reading.anon_kib + reading.swap_total_kib - reading.swap_free_kib


def room_kib(reading):
    """Return how much more the workloads can take before RAM and swap are exhausted.

    Available memory plus free swap; but zram swap is RAM: it can only take
    what available memory holds once compressed (its measured ratio), however
    large the device (a 1 GiB zram on a 1 GiB machine is not 1 GiB of room).
    """
    room = reading.mem_available_kib + reading.swap_free_kib
    if reading.zram_ram_kib > 0:
        room = min(room, reading.mem_available_kib * reading.zram_stored_kib
                   // reading.zram_ram_kib)
    return max(0, room)


class Trend(object):
    """The recent exact readings the thrashing rule looks back on.

    samples: (time_s, stall_total_us, demand_kib, counted_us), oldest first,
    over window_s, at most one per THRASH_SAMPLE_S (polls 10 ms apart would
    make thousands; the stall between two samples counts at the later one).
    counted_us is the stall since the previous sample when, at that moment,
    demand grew fast enough to exhaust room_kib within the horizon; left_s
    is that time at the latest sample (None: demand is not growing).  A
    reading without a stall figure (cheap, unreadable, no PSI) starts the
    history afresh.
    """

    def __init__(self, window_s=THRASH_WINDOW_S, growth_window_s=THRASH_GROWTH_WINDOW_S):
        self.window_s = window_s
        self.growth_window_s = growth_window_s
        self.samples = []
        self.counted_us = 0      # the sum of the samples' counted_us
        self.left_s = None
        self.stalling = False

    def add(self, now_s, reading, horizon_s):
        """Take one reading made at now_s (a monotonic clock)."""
        demand = demand_kib(reading)
        if not reading.exact or reading.stall_total_us is None or demand is None:
            self.clear()
            return
        samples = self.samples
        if samples and now_s - samples[-1][0] < THRASH_SAMPLE_S:
            return
        stall_us = reading.stall_total_us
        self.left_s = None
        past = None
        for sample in reversed(samples):     # the latest sample a growth window old
            if sample[0] <= now_s - self.growth_window_s:
                past = sample
                break
        if past is not None and demand > past[2]:
            self.left_s = room_kib(reading) * (now_s - past[0]) / float(demand - past[2])
        counted = 0
        self.stalling = False
        if samples:
            # max(): a counter that went back (a new cgroup) is no stall; min(): no
            # stall is longer than the time since the last sample (a garbled counter).
            stalled = min(max(0, stall_us - samples[-1][1]),
                          int((now_s - samples[-1][0]) * 1e6))
            if self.left_s is not None and self.left_s <= horizon_s:
                counted = stalled
            # Only a counted stall brings the rule nearer: a healthy box's background
            # stall (reclaim, refaults) must not keep the loop out of the idle path.
            self.stalling = counted > 0
        samples.append((now_s, stall_us, demand, counted))
        self.counted_us += counted
        while samples[0][0] <= now_s - self.window_s:
            self.counted_us -= samples.pop(0)[3]

    def clear(self):
        del self.samples[:]
        self.counted_us = 0
        self.left_s = None
        self.stalling = False

    def stall_ms(self):
        """Return the stall counted within the last window_s, in ms."""
        return self.counted_us // 1000


# The rules decide_rule() names: the "rule" of the kill line and the label
# of bustd_kills_total.  'memory': available memory low, no swap to consider;
# 'swap': available memory and free swap both low; 'pressure': PSI avg10;
# 'thrash': stall while memory demand grows (see Trend).
KILL_RULES = RULE_MEMORY, RULE_SWAP, RULE_PSI, RULE_THRASH = (
    'memory', 'swap', 'pressure', 'thrash')


def decide_rule(reading, th, trend=None):
    """Return (signal, rule): (0, None), or SIGTERM/SIGKILL and the rule that calls for it.

    Memory rule: available memory AND free swap both at or below their
    levels (no swap counts as low).  PSI rule: "some" avg10 at or above
    th.psi_avg10 while available memory is at or below th.psi_mem_max_kib,
    without swap (or with the thrashing rule off).  Thrashing rule: the
    trend's counted stall (see Trend) reaches th.thrash_stall_ms.
    """
    avail = reading.mem_available_kib
    no_swap = reading.swap_total_kib == 0
    memory_rule = RULE_MEMORY if no_swap else RULE_SWAP
    if avail <= th.mem_kill_kib and (no_swap or reading.swap_free_kib <= th.swap_kill_kib):
        return signal.SIGKILL, memory_rule
    if avail <= th.mem_term_kib and (no_swap or reading.swap_free_kib <= th.swap_term_kib):
        return signal.SIGTERM, memory_rule
    psi = reading.psi_some_avg10
    # With swap, avg10 rises in the bursts swap is there to absorb (the lab's
    # healthy 850 MB burst reached 25): the thrashing rule, which tells a burst
    # from a leak, takes over.  Without swap nothing absorbs a burst.
    psi_rule = th.psi_avg10 is not None and (no_swap or th.thrash_stall_ms is None)
    if psi_rule and psi is not None and psi >= th.psi_avg10 and avail <= th.psi_mem_max_kib:
        return signal.SIGTERM, RULE_PSI
    if th.thrash_stall_ms is not None and trend is not None \
            and trend.stall_ms() >= th.thrash_stall_ms:
        return signal.SIGTERM, RULE_THRASH
    return 0, None


def decide(reading, th, trend=None):
    """Return the signal the reading (and the trend) call for: 0, SIGTERM or SIGKILL."""
    return decide_rule(reading, th, trend)[0]


def decision_rule(reading, th, trend=None):
    """Return which rule calls for a signal now (one of KILL_RULES), or None."""
    return decide_rule(reading, th, trend)[1]


def describe_trigger(reading, th, trend=None):
    """Return why decide() acted, as 'key=value' text for the kill log line."""
    total = reading.mem_total_kib
    text = 'rule=%s mem_available=%s(%.1f%%) term_at=%.1f%% kill_at=%.1f%%' % (
        decide_rule(reading, th, trend)[1] or 'none',
        format_kib(reading.mem_available_kib).replace(' ', ''),
        percent_of(reading.mem_available_kib, total),
        percent_of(th.mem_term_kib, total), percent_of(th.mem_kill_kib, total))
    if reading.swap_total_kib:
        text += ' swap_free=%.1f%%' % percent_of(reading.swap_free_kib, reading.swap_total_kib)
    else:
        text += ' swap=none'
    if reading.psi_some_avg10 is not None:
        text += ' psi_some_avg10=%.2f' % reading.psi_some_avg10
    if trend is not None and trend.samples:
        text += ' stall=%dms/%gs left=%s' % (
            trend.stall_ms(), trend.window_s,
            'never' if trend.left_s is None else '%.1fs' % trend.left_s)
    if reading.zram_ram_kib:
        text += ' zram=%s(%.1f:1)' % (format_kib(reading.zram_ram_kib).replace(' ', ''),
                                      reading.zram_stored_kib / float(reading.zram_ram_kib))
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

    def __init__(self, stat, rss_kib, uid, oom_score, oom_score_adj):
        """A scanned process: its ProcStat, RSS, owner and scores; no admin rule applied yet."""
        self.pid = stat.pid
        self.name = stat.name
        self.state = stat.state
        self.ppid = stat.ppid
        self.pgrp = stat.pgrp
        self.session = stat.session
        self.flags = stat.flags
        self.starttime = stat.starttime
        self.rss_kib = rss_kib
        self.uid = uid
        self.oom_score = oom_score
        self.oom_score_adj = oom_score_adj
        self.cmdline = None
        self.never = None
        self.protected = None
        self.preference = 0
        self.badness = oom_score

    def rank_key(self, sort_by_rss=False):
        """Return the sort key: higher is killed first; full ties go to the younger process."""
        if sort_by_rss:
            return (self.preference, self.rss_kib, self.oom_score, self.starttime, self.pid)
        return (self.badness, self.rss_kib, self.starttime, self.pid)


def iter_pids(proc):
    """Yield the pids of a /proc tree (1..pid_max); an unreadable /proc yields nothing."""
    try:
        names = os.listdir(proc)
    except OSError:
        return
    pid_max = read_pid_max(proc)
    for name in names:
        if is_number_name(name):
            pid = int(name)
            if 0 < pid <= pid_max:     # "0" or "1e20" in a tree are nobody
                yield pid


def read_process(proc, pid, page_kib, score=None):
    """Return a Process for pid, or None if it vanished or is unreadable (hidepid).

    `score` is its oom_score when the caller has just read it.
    """
    base = '%s/%d' % (proc, pid)
    stat = parse_stat(read_small(base + '/stat') or b'')
    if stat is None or is_kernel_thread(stat) or stat.pid != pid:
        return None     # vanished, unreadable, or a kernel thread: never a candidate
    if is_exiting(stat):
        # A leader that called pthread_exit() is a zombie with no memory of its
        # own, while its threads live on with all of it: judge the group.
        thread = live_thread(proc, pid)
        if thread is not None:
            stat.state, stat.flags, stat.rss_pages = thread.state, thread.flags, thread.rss_pages
    if score is None:
        score = read_int(base + '/oom_score')
    adj = read_int(base + '/oom_score_adj')
    if score is None or adj is None:
        return None
    try:
        uid = os.stat(base).st_uid
    except OSError:
        return None
    p = Process(stat, stat.rss_pages * page_kib, uid, score, adj)
    p.never = never_reason(p, os.getpid())
    return p


def is_exiting(stat):
    """Return True if this task is a zombie, dead or exiting."""
    return stat.state in ('Z', 'X', 'x') or bool(stat.flags & PF_EXITING)


def live_thread(proc, pid):
    """Return the ProcStat of a thread of pid's group that is not exiting, or None."""
    try:
        tids = os.listdir('%s/%d/task' % (proc, pid))
    except OSError:
        return None
    for tid in tids[:64]:     # a bound: this runs only for exiting leaders
        if not is_number_name(tid):
            continue
        stat = parse_stat(read_small('%s/%d/task/%s/stat' % (proc, pid, tid)) or b'')
        if stat is not None and not is_exiting(stat):
            return stat
    return None


def is_kernel_thread(p):
    """Return True for kernel threads (they have no memory to free).

    PF_KTHREAD alone: inside a PID namespace pid 2 and its children are
    ordinary processes (docker run --init: tini is 1, the app 2).
    """
    return bool(p.flags & PF_KTHREAD)


def never_reason(p, self_pid):
    """Return why p may never be killed whatever the settings, or None."""
    if p.pid == 1:
        # The machine's init, or a container's: the kernel drops SIGKILL
        # (and any signal it has no handler for) sent to a namespace's init
        # from inside the namespace.
        return 'init'
    if p.pid == self_pid:
        return 'bustd itself'
    if is_kernel_thread(p):
        return 'kernel thread'
    if is_exiting(p):
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
        parsed = _glob_class(pattern, p + 1)
        if parsed is not None:   # else the '[' is an ordinary character, as in the shell
            end, negate, ranges = parsed
            hit = any(lo <= char <= hi for lo, hi in ranges)
            return end - p if hit != negate else 0
    return 1 if head == char else 0


def _glob_class(pattern, i):
    """Parse the [...] set whose body starts at i, as fnmatch does.

    Return (index after the ']', negated, [(low, high)...]), or None if the
    set is not closed.  A ']' right after '[' or '[!' is a member, '-' first
    or last is literal, and a range whose ends are reversed matches nothing.
    """
    j = i
    if pattern[j:j + 1] == '!':
        j += 1
    if pattern[j:j + 1] == ']':
        j += 1
    j = pattern.find(']', j)
    if j < 0:
        return None
    stuff = pattern[i:j]
    chunks = _glob_chunks(stuff) if '-' in stuff else [stuff]
    negate = chunks[0][:1] == '!'
    if negate:
        chunks[0] = chunks[0][1:]
    ranges = []
    for n, chunk in enumerate(chunks):
        # Each chunk's first character ends a range, its last starts the next one.
        inner = chunk[1 if n else 0:len(chunk) - 1 if n < len(chunks) - 1 else len(chunk)]
        ranges += [(c, c) for c in inner]
        if n:
            ranges.append((chunks[n - 1][-1], chunk[0]))
    return j + 1, negate, ranges


def _glob_chunks(stuff):
    """Split a set's body at the '-' of its ranges, dropping reversed ranges (fnmatch's way)."""
    chunks, start = [], 0
    k = 2 if stuff[0] == '!' else 1
    while True:
        k = stuff.find('-', k)
        if k < 0:
            break
        chunks.append(stuff[start:k])
        start = k + 1
        k += 3
    if stuff[start:]:
        chunks.append(stuff[start:])
    else:
        chunks[-1] += '-'
    for k in range(len(chunks) - 1, 0, -1):
        if chunks[k - 1][-1] > chunks[k][0]:
            chunks[k - 1] = chunks[k - 1][:-1] + chunks[k][1:]
            del chunks[k]
    return chunks


class PatternTimeout(Exception):
    """A regex match on a command line ran past PATTERN_CPU_S (raised by SIGVTALRM)."""


class Policy(object):
    """Who may be killed and who first: the admin's lists and preferences."""

    def __init__(self, settings, only_uid=None, log=None):
        self.proc = settings.proc
        self.log = log
        self.globs = list(settings.unkillables)
        self.default_globs = DEFAULT_UNKILLABLES if settings.default_unkillables else ()
        self.ignore = settings.ignore_re
        self.prefer = settings.prefer_re
        self.avoid = settings.avoid_re
        self.ignore_root = settings.ignore_root_user
        self.match_cmdline = settings.match == 'cmdline'
        self.sort_by_rss = settings.sort_by_rss
        self.only_uid = only_uid   # not root: only our own processes can be signalled
        self.bounded = self.matching = False
        if self.match_cmdline and (self.ignore or self.prefer or self.avoid):
            try:
                signal.signal(signal.SIGVTALRM, self.on_timer)
                self.bounded = True
            except (ValueError, AttributeError):   # not the main thread; not Unix
                pass

    def on_timer(self, signum, frame):
        """SIGVTALRM: end the match in progress (a late alarm after it is ignored)."""
        if self.matching:
            self.matching = False
            raise PatternTimeout()

    def search(self, regex, text, p):
        """Return regex.search(text), None past PATTERN_CPU_S of CPU on a command line."""
        if not self.bounded:
            return regex.search(text)
        try:
            self.matching = True
            signal.setitimer(signal.ITIMER_VIRTUAL, PATTERN_CPU_S)
            try:
                return regex.search(text)
            finally:
                self.matching = False
                signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        except PatternTimeout:
            if self.log is not None:
                self.log.warn_once('pattern:' + regex.pattern, 'pattern %r took more than '
                                   '%g s of CPU on the command line of pid %d %s: counted as '
                                   'no match (it backtracks; anchor or simplify it)' % (
                                       regex.pattern, PATTERN_CPU_S, p.pid,
                                       printable(p.name)))
            return None

    def match_text(self, p):
        """Return what the admin's patterns are matched against."""
        if self.match_cmdline:
            if p.cmdline is None:
                p.cmdline = read_cmdline(self.proc, p.pid)
            return p.cmdline[:PATTERN_TEXT_MAX] or p.name
        return p.name

    def classify(self, p):
        """Set p.protected, p.preference and p.badness from the settings."""
        text = self.match_text(p)
        for pattern in self.globs:
            if glob_match(pattern, text):
                p.protected = '-u %s' % pattern
                break
        else:
            if self.ignore is not None and self.search(self.ignore, text, p):
                p.protected = '--ignore'
            elif self.ignore_root and p.uid == 0:
                p.protected = '--ignore-root-user'
            elif self.only_uid is not None and p.uid != self.only_uid:
                p.protected = 'other user (not root)'
            else:
                for pattern in self.default_globs:   # designed for names, not cmdlines
                    if glob_match(pattern, p.name) and default_protection_holds(
                            self.proc, p, pattern):
                        p.protected = 'default: %s' % pattern
                        break
        if self.prefer is not None and self.search(self.prefer, text, p):
            p.preference += 1
        if self.avoid is not None and self.search(self.avoid, text, p):
            p.preference -= 1
        p.badness = p.oom_score + PREFER_ADJUST * p.preference


def default_protection_holds(proc, p, pattern):
    """Return True if p, whose name matches a default glob, is what the glob means.

    Any user can name a process "sshd" (/proc/self/comm), so the name alone
    protects nothing: p must also run as a system user (uid < FIRST_USER_UID,
    read from /proc/PID/status: /proc/PID itself is root's for any
    non-dumpable process), or run a root-owned executable whose file name
    matches the glob too (sshd's session child, systemd --user).
    """
    base = '%s/%d' % (proc, p.pid)
    status = read_file(base + '/status', 8192)
    uids = parse_status_uids(status.decode('ascii', 'replace')) if status else None
    if uids is None:
        uids = (p.uid, p.uid)        # no status (a test's tree): the owner of /proc/PID
    if max(uids) < FIRST_USER_UID:
        return True
    try:
        exe = os.readlink(base + '/exe')
        owner = os.stat(base + '/exe').st_uid
    except OSError:
        return False
    return owner == 0 and glob_match(pattern, os.path.basename(exe)[:15])


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


def find_victim(proc, policy, member_pids=None, exclude=()):
    """Return (victim or None, protected processes that outranked it), reading little.

    `exclude` holds (pid, starttime) of processes that must be passed over
    (they outlived SIGKILL, or could not be opened).

    The same answer as pick_victim(scan_processes(...)), for the kill path
    where every millisecond counts: only oom_score is read for every
    process; whole records are read in descending order of the best rank
    each could reach (oom_score, +PREFER_ADJUST with --prefer), until no
    process left can outrank the best found.  --sort-by-rss scans everything.
    """
    if policy.sort_by_rss:
        return pick_victim([p for p in scan_processes(proc, policy, member_pids)
                            if (p.pid, p.starttime) not in exclude], True)
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
        if p is None or p.never or (pid, p.starttime) in exclude:
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
    """Return True if pid is still the live process that started at `starttime`.

    `proc` must be bustd's own procfs (identity_root): the check is what
    makes a pid from the scan safe to hand to kill(2) or pidfd_open.
    """
    if not 0 < pid <= PID_MAX_LIMIT:
        return False
    stat = parse_stat(read_small('%s/%d/stat' % (proc, pid)) or b'')
    if stat is None or stat.pid != pid or stat.starttime != starttime or is_kernel_thread(stat):
        return False
    return stat.state not in ('Z', 'X', 'x') or live_thread(proc, pid) is not None


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
        self.identity = identity_root(proc)   # where a pid means what kill(2) takes
        self.members = members or [victim]
        self.pgrp = pgrp
        self.fds = {}
        self.by_start_time = set()   # pids held without a pidfd (past pidfds_max, EMFILE)
        self.fds_max = None
        self.error = None    # errno of the last failed signal
        self.cgroup = None   # a CgroupTarget's directory

    def open(self):
        """Take hold of the members; return False if none is still the scanned process."""
        return sum(1 for m in self.members if self.hold(m)) > 0

    def hold(self, m):
        """Take hold of member m; return False if it is not the scanned process any more.

        A pidfd while fewer than PIDFDS_HELD_MAX are held, else its start time,
        checked again before each signal.
        """
        if self.calls.pidfd_open is not None and (not self.fds or
                                                   len(self.fds) < self.pidfds_max()):
            try:
                fd = self.calls.pidfd_open(m.pid)
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE):
                    return False     # ESRCH: gone
            else:
                if not same_process(self.identity, m.pid, m.starttime):
                    os.close(fd)
                    return False
                self.fds[m.pid] = fd
                return True
        if not same_process(self.identity, m.pid, m.starttime):
            return False
        if self.calls.pidfd_open is not None:
            self.by_start_time.add(m.pid)
        return True

    def pidfds_max(self):
        """Return how many pidfds this target may hold (asked only of group and cgroup kills)."""
        if self.fds_max is None:
            self.fds_max = PIDFDS_HELD_MAX
            try:
                import resource
                soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
                if soft != resource.RLIM_INFINITY:
                    self.fds_max = max(1, min(PIDFDS_HELD_MAX, soft // 4))
            except (ImportError, ValueError, OSError):
                pass
        return self.fds_max

    def is_alive(self, m):
        """Return True while member m has not exited."""
        fd = self.fds.get(m.pid)
        if fd is not None:
            return not _fd_readable(fd, 0)
        if self.calls.pidfd_open is not None and m.pid not in self.by_start_time:
            return False     # could not be opened: it was gone already
        return same_process(self.identity, m.pid, m.starttime)

    def signal_member(self, m, sig):
        """Signal member m through its pidfd, else after a start-time check; False if gone."""
        fd = self.fds.get(m.pid)
        if fd is not None:
            self.calls.pidfd_send_signal(fd, sig)
        elif (self.calls.pidfd_open is None or m.pid in self.by_start_time) and m.pid > 0 \
                and same_process(self.identity, m.pid, m.starttime):
            os.kill(m.pid, sig)
        else:
            return False
        return True

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
            try:
                if not self.signal_member(self.victim, sig):
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
            if p is None or p.pgrp != self.pgrp or p.never or not self.hold(p):
                continue
            self.members.append(p)
            added += 1
        return added

    def close(self):
        """Release the pidfds."""
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}
        self.by_start_time = set()


# --kill-cgroup: the victim's whole leaf cgroup (a service, an app scope, a
# container).  cgroup v2's cgroup.kill (Linux 5.14) SIGKILLs every member at
# once, forks included; elsewhere each member of cgroup.procs is signalled
# through its pidfd.  SIGTERM always goes member by member (cgroup.kill only
# knows SIGKILL).

def victim_cgroup(proc, pid, version=None):
    """Return (directory, mountpoint, version) of pid's cgroup, or None.

    The v2 hierarchy is used where it is mounted and pid is not in its root
    (hybrid hosts keep services in the v1 memory hierarchy only), else the
    v1 memory hierarchy; `version` (the watched --cgroup's) forces one.
    """
    # os.fsdecode: a cgroup's name is any bytes its (delegated) owner chose;
    # decoded so, the path names that very directory (not U+FFFD's), and
    # Python 3.6 in the C locale can still pass it to the kernel.
    mounts = parse_mountinfo_cgroups(os.fsdecode(read_file(proc + '/self/mountinfo', 1 << 20)
                                                 or b''))
    inner = parse_proc_cgroup(os.fsdecode(read_file('%s/%s/cgroup' % (proc, pid)) or b''))
    keys = ('v2', 'v1') if version is None else ('v%d' % version,)
    found = None
    for key in keys:
        if key in mounts and key in inner and '\0' not in mounts[key][0] + inner[key]:
            mountpoint, root = mounts[key]     # (a NUL comes only from a fake tree)
            found = (_cgroup_dir(mountpoint, root, inner[key]), mountpoint, int(key[1]))
            if found[0] != os.path.normpath(mountpoint):
                return found
    return found     # the root cgroup (refused), or None


def cgroup_kill_refusal(path, mountpoint, own_dir, watched_dir, members, has_children):
    """Return why cgroup `path` may not be killed as a whole, or None.

    `members` are its processes (classified Process records), `own_dir`
    bustd's own cgroup in the same hierarchy, `watched_dir` the --cgroup root.
    """
    path = os.path.normpath(path)
    if path == os.path.normpath(mountpoint):
        return 'it is the root cgroup'
    if os.path.basename(path) == 'init.scope':
        return 'it is init.scope'
    if own_dir is not None and (own_dir == path or own_dir.startswith(path + '/')):
        return "it holds bustd itself (bustd's cgroup is %s)" % printable(own_dir, PATH_TEXT_MAX)
    if watched_dir is not None and os.path.normpath(watched_dir) == path:
        return 'it is the watched --cgroup root'
    if has_children:
        return 'it is not a leaf (it has child cgroups)'
    for m in members:
        if m.pid == 1 or (m.never and m.never != 'exiting') or m.protected:
            return 'it holds %d %s (%s)' % (m.pid, printable(m.name), m.protected or m.never)
    return None


def cgroup_pids(path):
    """Return the pids listed in path/cgroup.procs ([] if unreadable)."""
    data = read_file(path + '/cgroup.procs', 1 << 20) or b''
    return [pid for pid in (int(x) for x in data.split() if x.isdigit())
            if 0 < pid <= PID_MAX_LIMIT]


def has_child_cgroups(path):
    """Return True if the cgroup directory has child cgroups."""
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return any(os.path.isfile(os.path.join(path, n, 'cgroup.procs')) for n in names)


def make_cgroup_target(victim, calls, proc, policy, watched_dir=None, version=None):
    """Return (CgroupTarget, None) for the victim's leaf cgroup, or (None, why not)."""
    found = victim_cgroup(proc, victim.pid, version)
    if found is None:
        return None, 'its cgroup is unknown (no cgroup hierarchy in %s/%d/cgroup)' % (
            proc, victim.pid)
    path, mountpoint, version = found
    own = victim_cgroup(proc, 'self', version)
    page_kib = os.sysconf('SC_PAGE_SIZE') // 1024
    members, unread = [], []
    for pid in cgroup_pids(path):
        p = read_process(proc, pid, page_kib)
        if p is not None:
            policy.classify(p)
            members.append(p)
        else:
            unread.append(pid)
    refusal = cgroup_kill_refusal(path, mountpoint, own and own[0], watched_dir, members,
                                  has_child_cgroups(path))
    if refusal is None and victim.pid not in set(m.pid for m in members):
        refusal = 'pid %d is not listed in its cgroup.procs' % victim.pid
    if refusal is None and unread:
        refusal = unchecked_member(proc, path, unread)
    if refusal is not None:
        return None, '%s: %s' % (printable(path, PATH_TEXT_MAX), refusal)
    members = [m for m in members if m.never != 'exiting']
    return CgroupTarget(victim, calls, proc, members, path, version), None


def unchecked_member(proc, path, unread):
    """Return why the cgroup may not be killed when members in `unread` could not be read.

    cgroup.kill kills what bustd did not see as surely as what it did, so a
    member still listed that could not be checked (hidepid hides it, its
    entry is unreadable) may be a protected one.  Members that exited
    meanwhile, and kernel threads (cgroup v1 lets them join; no signal
    reaches them), are no reason.
    """
    listed = set(cgroup_pids(path))
    for pid in unread:
        if pid not in listed:
            continue
        stat = parse_stat(read_small('%s/%d/stat' % (proc, pid)) or b'')
        if stat is None or not is_kernel_thread(stat):
            return 'its member pid %d cannot be read in %s, so it was not checked' % (pid, proc)
    return None


class CgroupTarget(Target):
    """The victim's whole leaf cgroup: every member held by a pidfd, SIGKILL by cgroup.kill."""

    def __init__(self, victim, calls, proc, members, path, version):
        Target.__init__(self, victim, calls, proc, members)
        self.cgroup = path
        self.version = version
        self.used_cgroup_kill = False

    def send(self, sig):
        """Signal every live member; return False if none was left."""
        if not self.alive_count():
            self.error = errno.ESRCH
            return False
        if sig == signal.SIGKILL and self.version == 2:
            try:
                fd = os.open(self.cgroup + '/cgroup.kill', os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(fd, b'1')
                finally:
                    os.close(fd)
                self.used_cgroup_kill = True
                return True
            except OSError:
                pass     # Linux < 5.14: no cgroup.kill; one by one below
        sent = False
        for m in self.members:
            if not self.is_alive(m):
                continue
            try:
                sent = self.signal_member(m, sig) or sent
            except OSError as exc:
                self.error = exc.errno
        return sent

    def adopt_stragglers(self):
        """Take hold of members that joined (forked) after the scan; return how many."""
        known = set(m.pid for m in self.members)
        page_kib = os.sysconf('SC_PAGE_SIZE') // 1024
        added = 0
        for pid in cgroup_pids(self.cgroup):
            if pid in known:
                continue
            p = read_process(self.proc, pid, page_kib)
            if p is None or p.never == 'exiting':
                continue     # a zombie stays listed until its parent reaps it
            if self.hold(p):
                self.members.append(p)
            added += 1
        return added


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
    killed (or of a process born since, with --prefer), `avail_kib` and
    `swap_free_kib` the exact available memory and free swap at the ranking
    and `total_kib` the RAM + swap that oom_score divides by.  No other
    process can have grown by more than the drop of available memory plus
    free swap since the ranking (short of memory freed meanwhile by a third,
    or of pages already in memory newly mapped: a cached file, tmpfs), so a
    victim whose fresh metric still exceeds runner_up plus that drop is
    still the one a full ranking picks.  `pass_over_ends_s` is when the
    first pass-over in force at the ranking ends: from then on a full
    ranking may choose a process this one left out.
    """
    __slots__ = ('victim', 'skipped', 'target', 'runner_up', 'avail_kib', 'swap_free_kib',
                 'total_kib', 'at_s', 'pass_over_ends_s')

    def __init__(self, target, skipped, runner_up, reading, at_s, pass_over_ends_s=None):
        self.victim = target.victim
        self.skipped = skipped
        self.target = target
        self.runner_up = runner_up
        self.avail_kib = reading.mem_available_kib
        self.swap_free_kib = reading.swap_free_kib
        self.total_kib = reading.mem_total_kib + reading.swap_total_kib
        self.at_s = at_s
        self.pass_over_ends_s = pass_over_ends_s

    def refusal(self, proc, policy, reading, member_pids, now_s):
        """Return why the victim may not be signalled now without a new ranking, or None.

        Re-reads the victim's stat, oom_score, oom_score_adj and owner, so
        the kernel rules (init, exiting, -1000, bustd itself), the admin's
        rules (a new name, owner or executable) and the start time (a recycled pid)
        apply to what it is now; on success self.victim is that fresh record.
        """
        if now_s - self.at_s > ARM_MAX_AGE_S:
            return 'the ranking is %.2f s old' % (now_s - self.at_s)
        if not reading.exact:
            return 'no exact reading'
        if self.pass_over_ends_s is not None and now_s >= self.pass_over_ends_s:
            return 'a process passed over at the ranking may be chosen again'
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
        # Always again: a default protection also reads status and exe, which
        # exec (of a root-owned "dpkg", same comm, same owner) changes.
        policy.classify(fresh)
        if fresh.protected:
            return 'it is protected now (%s)' % fresh.protected
        # Memory a process grows by comes from available memory, or from swap
        # when the kernel swaps others out to make room (available holds still).
        dropped_kib = max(0, self.avail_kib - reading.mem_available_kib,
                          self.avail_kib + self.swap_free_kib
                          - reading.mem_available_kib - reading.swap_free_kib)
        if policy.sort_by_rss:
            bound = dropped_kib
        else:    # oom_score is in thousandths of RAM + swap, truncated: +1
            bound = -(-dropped_kib * 1000 // max(1, self.total_kib)) + 1
        if lead_metric(fresh, policy.sort_by_rss) <= self.runner_up + bound:
            return 'another process may have caught up (%d MiB used since the ranking)' % (
                dropped_kib // 1024)
        fresh.cmdline = old.cmdline if fresh.cmdline is None else fresh.cmdline
        # The kill line and its "chose ... because" come from the target.
        self.victim = self.target.victim = self.target.members[0] = fresh
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
# One value of each field's real type: templates are checked against it.
TEMPLATE_EXAMPLE = {'name': 'hog', 'pid': 4242, 'uid': 1000, 'user': 'alice',
                    'rss': '1.5 GiB', 'signal': 'SIGTERM', 'mem_percent': '4.8',
                    'cmdline': 'hog --eat'}
# The largest pid (PID_MAX_LIMIT) and uid: {pid:c} formats 4242 but not every pid.
TEMPLATE_EXAMPLE_LARGEST = dict(TEMPLATE_EXAMPLE, pid=4194304, uid=4294967294)
TEMPLATE_MAX_CHARS = 4096   # rendered: a notification, not megabytes built at each kill
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


class Helper(object):
    """A running helper: its label, deadline (None once killed), output pipe and output."""
    __slots__ = ('label', 'deadline', 'fd', 'output', 'timeout_s')

    def __init__(self, label, deadline, fd, timeout_s):
        self.label = label
        self.deadline = deadline
        self.fd = fd
        self.output = b''
        self.timeout_s = timeout_s


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
        self.running = {}   # pid -> Helper
        self.timed_out = set()   # pids of this batch killed at their deadline

    def start_batch(self, commands, timeout_s=None):
        """Start the commands; return their pids ([] if a batch is still running)."""
        self.poll()
        if self.running:
            self.log.warning('helpers still running (%s): not starting %s' % (
                ', '.join(h.label for h in self.running.values()),
                ', '.join(c.label for c in commands)))
            return []
        self.timed_out.clear()
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
        self.running[pid] = Helper(command.label, deadline, read_fd, deadline - self.clock())
        return pid

    def poll(self):
        """Collect output, reap finished helpers, kill those past their deadline."""
        now = self.clock()
        for pid, helper in list(self.running.items()):
            self._drain(helper)
            if helper.deadline is not None and now >= helper.deadline:
                # The group takes the helper's children too; the pid itself in
                # case the child has not reached setsid() yet.
                for kill in (os.killpg, os.kill):
                    try:
                        kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                self.timed_out.add(pid)
                helper.deadline = None   # killed: reaped below, or on a later poll if it
                #                          sits in uninterruptible sleep (never waited for)
            done, status = _reap(pid, patience_s=0.1 if helper.deadline is None else 0)
            if done:
                self._drain(helper)
                self._finish(pid, helper, _status_text(status) if helper.deadline is not None
                             else 'killed after its %.1f s timeout' % helper.timeout_s)

    def wait(self, pids, budget_s, interrupt=None):
        """Wait up to budget_s for pids to finish; return False if one did not in time
        (interrupt() True stops early)."""
        deadline = self.clock() + budget_s
        while any(pid in self.running for pid in pids):
            self.poll()
            if self.clock() >= deadline or (interrupt is not None and interrupt()):
                return False
            time.sleep(KILL_POLL_S)
        # Killed at its own deadline (which a poll may reach first) is not finished.
        return not self.timed_out.intersection(pids)

    def kill(self, pids):
        """Kill the given helpers now (a before-hook that overran its budget)."""
        for pid in pids:
            helper = self.running.get(pid)
            if helper is not None and helper.deadline is not None:
                helper.deadline = self.clock()   # deadline reached: poll() kills it
        if pids:
            self.poll()

    @staticmethod
    def _drain(helper):
        while True:
            try:
                chunk = os.read(helper.fd, 4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not chunk:
                return
            if len(helper.output) < 4096:   # keep the log line bounded
                helper.output += chunk

    def _finish(self, pid, helper, how):
        del self.running[pid]
        os.close(helper.fd)
        output = helper.output.decode('utf-8', 'replace').strip()
        message = '%s (pid %d): %s' % (helper.label, pid, how)
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


# --metrics-file: the Prometheus text exposition format, for node_exporter's
# textfile collector.  Written only from the main loop, after a victim is
# gone, never between a decision and its signal.

def prom_label_value(text):
    """Return text escaped for a label value: backslash, double quote and newline."""
    return str(text).replace('\\', '\\\\').replace('"', '\\"').replace('\n', '\\n')


def prom_number(value):
    """Return a sample value: integers plainly, floats in repr, NaN for None."""
    if value is None:
        return 'NaN'
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def open_new_file(path, mode):
    """Open path for writing as a file this call creates; return the fd.

    O_EXCL never follows a symlink: one planted at a predictable temporary
    name (by whoever may write to the directory) would otherwise make root
    overwrite its target.  A leftover (a crash, or such a symlink) is
    removed, not followed, and the creation tried once more.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        return os.open(path, flags, mode)
    except FileExistsError:
        os.unlink(path)
        return os.open(path, flags, mode)


class Metrics(object):
    """What --metrics-file reports: kills by signal and rule, the last kill, the reading."""

    def __init__(self, path, mode, clock=time.time):
        self.path = path
        self.mode = mode                  # 'machine' or 'cgroup'
        self.clock = clock
        self.start_time_s = clock()
        self.kills = dict(((sig, rule), 0) for sig in ('SIGTERM', 'SIGKILL')
                          for rule in KILL_RULES)
        self.last_kill_s = 0.0
        self.last_decision_s = 0.0
        self.next_write_s = 0.0           # monotonic: the next periodic write
        self.next_warning_s = 0.0
        self.failing = False

    def count_kill(self, sig, rule, decision_s):
        """Record one kill: its last signal, the rule that called for it, the latency (s)."""
        key = (SIGNAL_NAMES.get(sig, str(sig)), rule or 'memory')
        self.kills[key] = self.kills.get(key, 0) + 1
        self.last_kill_s = self.clock()
        self.last_decision_s = decision_s

    def render(self, reading, th, up=1):
        """Return the exposition text for this reading and thresholds."""
        families = [
            ('bustd_up', 'gauge', '1 while bustd runs, 0 after a clean stop.', [('', up)]),
            ('bustd_info', 'gauge', 'Version and mode (machine or cgroup) of bustd.',
             [('{version="%s",mode="%s"}' % (prom_label_value(__version__),
                                              prom_label_value(self.mode)), 1)]),
            ('bustd_start_time_seconds', 'gauge', 'Start time of bustd, seconds since the epoch.',
             [('', round(self.start_time_s, 3))]),
            ('bustd_kills_total', 'counter', 'Victims killed, by the last signal sent and the '
             'rule that called for it.',
             [('{signal="%s",rule="%s"}' % (prom_label_value(sig), prom_label_value(rule)), n)
              for (sig, rule), n in sorted(self.kills.items())]),
            ('bustd_last_kill_timestamp_seconds', 'gauge',
             'Time of the last kill, seconds since the epoch (0: none yet).',
             [('', round(self.last_kill_s, 3))]),
            ('bustd_last_kill_decision_seconds', 'gauge', 'Decision latency of the last kill: '
             'from the reading that called for it to the first signal.',
             [('', round(self.last_decision_s, 6))]),
            ('bustd_memory_available_bytes', 'gauge', 'Available memory (MemAvailable, or the '
             "cgroup's limit - usage + page cache).", [('', reading.mem_available_kib * 1024)]),
            ('bustd_swap_free_bytes', 'gauge', 'Free swap.', [('', reading.swap_free_kib * 1024)]),
            ('bustd_level_bytes', 'gauge', 'Available-memory level at which each signal is sent.',
             [('{signal="SIGTERM"}', th.mem_term_kib * 1024),
              ('{signal="SIGKILL"}', th.mem_kill_kib * 1024)]),
        ]
        if reading.psi_some_avg10 is not None:
            families.append(('bustd_psi_some_avg10', 'gauge', 'Memory pressure: PSI "some" '
                             'avg10, in percent.', [('', reading.psi_some_avg10)]))
        lines = []
        for name, kind, text, samples in families:
            lines.append('# HELP %s %s' % (name, text))
            lines.append('# TYPE %s %s' % (name, kind))
            lines += ['%s%s %s' % (name, labels, prom_number(value)) for labels, value in samples]
        return '\n'.join(lines) + '\n'

    def write(self, text, log, now_s):
        """Replace the file atomically (temp file in its directory + rename); True if written.

        A failure is one warning, repeated at most once per METRICS_WARN_EVERY_S.
        Anything but a regular file at the path is left alone: the rename
        would replace it, and `--metrics-file /dev/null` would turn the
        machine's /dev/null into a text file (a symlink too: /dev/stdout or
        /etc/resolv.conf would become the metrics).
        """
        import stat as stat_module
        tmp = '%s.%d.tmp' % (self.path, os.getpid())
        try:
            try:
                mode = os.lstat(self.path).st_mode
            except FileNotFoundError:
                mode = None
            if mode is not None and not stat_module.S_ISREG(mode):
                raise OSError(errno.EEXIST, 'it is not a regular file, and each write replaces '
                              'the file: give a path such as /run/bustd/bustd.prom')
            try:
                fd = open_new_file(tmp, 0o644)
            except FileNotFoundError:
                # /run/bustd is made by systemd (RuntimeDirectory=); elsewhere
                # (OpenRC, runit, BusyBox) by bustd, one level only.
                os.mkdir(os.path.dirname(self.path), 0o755)
                # fchmod (our umask may be 077): a chmod by name would follow a
                # symlink swapped in meanwhile by whoever may write the parent.
                dir_fd = os.open(os.path.dirname(self.path),
                                 os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    os.fchmod(dir_fd, 0o755)
                finally:
                    os.close(dir_fd)
                log.info('--metrics-file: created %s' % os.path.dirname(self.path))
                fd = open_new_file(tmp, 0o644)
            try:
                os.fchmod(fd, 0o644)    # readable by node_exporter whatever our umask
                os.write(fd, text.encode('utf-8'))
            finally:
                os.close(fd)
            os.rename(tmp, self.path)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if now_s >= self.next_warning_s:
                self.next_warning_s = now_s + METRICS_WARN_EVERY_S
                log.warning('--metrics-file: cannot write %s (%s); retrying every minute, '
                            'warning at most once an hour' % (self.path, exc.strerror))
            self.failing = True
            return False
        if self.failing:
            self.failing = False
            self.next_warning_s = 0.0
            log.info('--metrics-file: writing %s again' % self.path)
        return True


# ============================================================================
# Logging and the service manager: stderr/journald, syslog, a file, sd_notify
# ============================================================================

class Log(object):
    """Line logger with one sink; debug lines only with -V.

    A line the sink cannot take (a full disk, /dev/full, no syslog daemon, a
    log whose directory was removed) goes to the fallback sink instead, after
    one line there saying why: a kill is never logged to nowhere.
    """

    def __init__(self, sink, verbose=False, fallback=None):
        self.sink = sink
        self.verbose = verbose
        self.fallback = fallback
        self.failing = False   # the sink failed; the fallback was told why
        self.seen = set()

    def error(self, message):
        self.write(3, message)

    def warning(self, message):
        self.write(4, message)

    def info(self, message):
        self.write(6, message)

    def debug(self, message):
        if self.verbose:
            self.write(7, message)

    def warn_once(self, key, message):
        """Log a warning the first time `key` is seen; return True then."""
        if key in self.seen:
            return False
        self.seen.add(key)
        self.warning(message)
        return True

    def write(self, priority, message):
        if self.sink.write(priority, message):
            self.failing = False
            return
        if self.fallback is None:
            return
        if not self.failing:
            self.failing = True
            self.fallback.write(4, 'cannot write the log to %s (%s): logging here until it '
                                   'works again' % (self.sink.describe(), self.sink.error))
        self.fallback.write(priority, message)

    def reopen(self):
        """Reopen the sink (SIGHUP: logrotate) and say how that went."""
        try:
            self.sink.reopen()
        except OSError as exc:
            # The sink now fails every line: this one, too, reaches the fallback.
            self.error('SIGHUP: cannot reopen the log %s: %s' % (self.sink.describe(),
                                                                 exc.strerror))
            return
        self.info('SIGHUP: reopened the log (%s)' % self.sink.describe())


def write_all(fd, data):
    """Write all of data to fd, retrying short writes; OSError on failure."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class StderrSink(object):
    """stderr; '<N>' priority prefixes when stderr is journald's stream (JOURNAL_STREAM)."""

    def __init__(self, fd=2, environ=None):
        self.fd = fd
        self.journal = is_journal_stream(fd, os.environ if environ is None else environ)
        self.error = None

    def write(self, priority, message):
        """Write one line; return False (reason in .error) if it could not be written."""
        if self.journal:
            line = '<%d>%s\n' % (priority, message)
        else:
            line = '%s: %s%s\n' % (PROG, {3: 'error: ', 4: 'warning: '}.get(priority, ''), message)
        try:
            write_all(self.fd, line.encode('utf-8', 'replace'))
            return True
        except OSError as exc:   # a closed stderr must not stop the daemon
            self.error = exc.strerror
            return False

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
        self.error = None

    def write(self, priority, message):
        """Send one datagram; return False (reason in .error) if it could not be sent."""
        data = ('<%d>%s[%d]: %s' % (3 * 8 + priority, PROG, os.getpid(), message)).encode(
            'utf-8', 'replace')
        for _ in range(2):   # a restarted syslogd needs one reconnect
            try:
                if self.sock is None:
                    self.sock = _unix_datagram_socket()
                self.sock.sendto(data, self.path)
                return True
            except OSError as exc:
                self.error = exc.strerror
                if self.sock is not None:
                    self.sock.close()
                self.sock = None
        return False

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
        self.error = None
        self.reopen()

    def reopen(self):
        """Open the path again (OSError if it cannot be: then every write fails)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.fd = open_log_file(self.path)

    def write(self, priority, message):
        """Append one line; return False (reason in .error) if it could not be written."""
        if self.fd is None:
            self.error = 'not open'
            return False
        line = '%s %s[%d]: %s%s\n' % (
            time.strftime('%Y-%m-%dT%H:%M:%S'), PROG, os.getpid(),
            {3: 'error: ', 4: 'warning: ', 7: 'debug: '}.get(priority, ''), message)
        try:
            write_all(self.fd, line.encode('utf-8', 'replace'))
            return True
        except OSError as exc:
            self.error = exc.strerror
            return False

    def describe(self):
        return self.path


def open_log_file(path):
    """Return an fd appending to path: a regular file or a character device, never a FIFO
    or a symbolic link.

    O_NONBLOCK: opening a FIFO for writing would wait for a reader forever.
    O_NOFOLLOW: root appending through a link planted at the path would write
    into any file (/etc/passwd).
    """
    import stat as stat_module
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = stat_module.S_IFREG
    if stat_module.S_ISLNK(mode):
        raise OSError(errno.ELOOP, 'a symbolic link: give the path it leads to', path)
    fd = None
    if stat_module.S_ISREG(mode) or stat_module.S_ISCHR(mode):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC |
                         os.O_NONBLOCK | os.O_NOCTTY | os.O_NOFOLLOW, 0o640)
        except OSError as exc:
            if exc.errno == errno.ELOOP:   # a link planted since the lstat
                raise OSError(errno.ELOOP, 'a symbolic link: give the path it leads to', path)
            raise
        mode = os.fstat(fd).st_mode   # what was opened, if the path changed meanwhile
    if not (stat_module.S_ISREG(mode) or stat_module.S_ISCHR(mode)):
        if fd is not None:
            os.close(fd)
        raise OSError(errno.EINVAL, 'not a regular file', path)
    return fd


class KmsgSink(object):
    """The kernel log (/dev/kmsg, read by dmesg and journald): the last resort of a daemon."""

    def __init__(self, path='/dev/kmsg'):
        self.path = path
        self.error = None

    def write(self, priority, message):
        """Write one record; return False (reason in .error) if it could not be written."""
        line = '<%d>%s[%d]: %s\n' % (priority, PROG, os.getpid(), message)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            self.error = exc.strerror
            return False
        try:
            os.write(fd, line.encode('utf-8', 'replace')[:1000])
            return True
        except OSError as exc:
            self.error = exc.strerror
            return False
        finally:
            os.close(fd)

    def reopen(self):
        return None

    def describe(self):
        return 'the kernel log (%s)' % self.path


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


class Pidfile(object):
    """--pidfile: holds bustd's pid and, for the daemon's whole life, an exclusive lock.

    The lock (flock: inherited through daemonize's forks, released by the
    kernel whenever bustd ends) is what says a bustd runs, never a pid that
    may have been recycled by another process.  The file is written in
    place: no temporary file for anyone to plant a symlink at.
    """

    def __init__(self, path):
        import fcntl
        import stat as stat_module
        self.path = path
        try:
            # O_NOFOLLOW: never truncate what a planted symlink points at;
            # O_NONBLOCK: a FIFO is refused below instead of waited on.
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK |
                              os.O_CLOEXEC | os.O_NOCTTY, 0o644)
        except OSError as exc:
            why = {errno.ELOOP: 'is a symbolic link', errno.EISDIR: 'is a directory'}.get(
                exc.errno, 'cannot be opened (%s)' % exc.strerror)
            raise EnvironmentProblem('--pidfile %s %s; give the path of a regular file in a '
                                     'directory bustd may write, e.g. --pidfile /run/bustd.pid'
                                     % (path, why))
        try:
            if not stat_module.S_ISREG(os.fstat(self.fd).st_mode):
                raise EnvironmentProblem('--pidfile %s is not a regular file; give a file path, '
                                         'e.g. --pidfile /run/bustd.pid' % path)
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise EnvironmentProblem('--pidfile %s cannot be locked (%s); give a '
                                             'file on a local filesystem' % (path, exc.strerror))
                pid = os.pread(self.fd, 32, 0).decode('ascii', 'replace').strip()
                raise EnvironmentProblem('--pidfile %s is locked by a running bustd (%s); '
                                         'stop it first or give another --pidfile' % (
                                             path, 'pid ' + printable(pid, 20) if pid
                                             else 'starting up'))
        except EnvironmentProblem:
            os.close(self.fd)
            raise

    def write(self, pid):
        """Write pid into the file (in place: the lock is on this very file)."""
        data = ('%d\n' % pid).encode()
        os.pwrite(self.fd, data, 0)
        os.ftruncate(self.fd, len(data))

    def remove(self):
        """Unlink the file if it is still the one we locked, and let the lock go."""
        try:
            ours, there = os.fstat(self.fd), os.stat(self.path)
            if (ours.st_dev, ours.st_ino) == (there.st_dev, there.st_ino):
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)


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
    """What the signal handlers ask of the loop (handlers only set these).

    While `interruptible` is set (the loop runs), SIGTERM/SIGINT also raise
    Stopping, so that a victim scan, a pattern match or a kill wait ends
    within milliseconds instead of when it is done.
    """
    __slots__ = ('stop', 'hup', 'usr1', 'interruptible', 'pid')

    def __init__(self):
        self.stop = 0
        self.hup = False
        self.usr1 = False
        self.interruptible = False
        self.pid = os.getpid()


class Stopping(BaseException):
    """SIGTERM/SIGINT arrived while the loop was busy (a BaseException, like
    KeyboardInterrupt: the loop's `except Exception` must not swallow it)."""


# Caught from the first line of main(); SIGTERM keeps its default action (stop
# at once) until the loop's handlers are in place.
EARLY_SIGNALS = (signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


def catch_signals(flags, signals=EARLY_SIGNALS):
    """Route the signals to flags, then unblock them; return flags.

    Installed first thing: a default SIGHUP or SIGUSR1 would kill bustd and
    SIGINT raise a traceback.  relaunch blocks them across its exec, so that
    none is lost; the unblock here delivers what came meanwhile (and a daemon
    must not keep a blocked mask it inherited: daemon(7)).
    """
    def on_stop(signum, frame):
        flags.stop = signum
        # Not in a forked helper between fork and exec: only the daemon unwinds.
        if flags.interruptible and os.getpid() == flags.pid:
            flags.interruptible = False
            raise Stopping(signum)

    def on_hup(signum, frame):
        flags.hup = True

    def on_usr1(signum, frame):
        flags.usr1 = True

    handlers = {signal.SIGTERM: on_stop, signal.SIGINT: on_stop, signal.SIGHUP: on_hup,
                signal.SIGUSR1: on_usr1}
    for signum in signals:
        signal.signal(signum, handlers[signum])
    # An ignored SIGCHLD survives exec: the kernel would reap bustd's children
    # itself, waitpid would fail, and a child's pid could be reused while bustd
    # still means to signal it.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, signals + (signal.SIGTERM,))
    return flags


def install_signal_handlers(flags):
    """Route SIGTERM/SIGINT/SIGHUP/SIGUSR1 to flags; return a pipe fd that wakes the loop."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    try:
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except TypeError:   # Python < 3.7
        signal.set_wakeup_fd(write_fd)
    catch_signals(flags, EARLY_SIGNALS + (signal.SIGTERM,))
    return read_fd


def open_psi_trigger(path, proc='/proc'):
    """Register a PSI trigger on path; return (fd, trigger) or (None, why not).

    Only on a real procfs or cgroupfs file: written into an ordinary file
    (a --proc tree copied or faked) the trigger would corrupt the file.
    """
    if path is None:
        return None, 'no PSI file'
    fs_type = mount_fs_type((read_file(proc + '/self/mountinfo', 1 << 20) or b'').decode(
        'utf-8', 'replace'), os.path.realpath(path))
    if fs_type not in PSI_FILESYSTEMS:
        return None, '%s is on %s, not procfs or cgroupfs' % (path, fs_type or 'no known mount')
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
        self.threshold_fd = None   # the cgroup v1 usage threshold eventfd, if any

    def add(self, fd, events, name, drain=True, far=False):
        """Watch fd; `far`: it must also end sleeps far from every level (see far())."""
        self.poller.register(fd, events)
        self.drains[fd] = (name, drain)
        self.far_events = self.far_events or far

    def watch_threshold(self, fd):
        """Watch the cgroup threshold eventfd fd (None: none) instead of the last one,
        which is closed: each set of thresholds has its own eventfd."""
        if self.threshold_fd is not None:
            try:
                self.poller.unregister(self.threshold_fd)
            except KeyError:
                pass     # __call__ dropped it already on POLLERR (the cgroup went away)
            os.close(self.threshold_fd)
        self.threshold_fd = fd
        if fd is not None:
            self.add(fd, self.select.POLLIN, 'cgroup threshold', far=True)

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


class Throttle(object):
    """Lets one repeated log message through at most once per interval_s."""

    def __init__(self, interval_s=THROTTLE_S):
        self.interval_s = interval_s
        self.next_s = None
        self.suppressed = 0

    def ready(self, now):
        """Return True if the message may be logged at `now` (and hold it back after)."""
        if self.next_s is not None and now < self.next_s:
            self.suppressed += 1
            return False
        self.next_s = now + self.interval_s
        return True

    def suppressed_text(self):
        """Return ' (N more like this not logged)' once after N were held back, else ''."""
        count, self.suppressed = self.suppressed, 0
        return ' (%d more like this not logged)' % count if count else ''


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
        self.waiter = None   # the Waiter that sleeps end on, if any (build_daemon)
        self.flags = Flags()
        self.reading = Reading()
        self.th = None
        self.user_name = user_name_function()
        self.next_report = 0.0
        self.next_dry_run_log = 0.0
        # One throttle per repeated message, so that one cannot silence another.
        self.no_victim_log = Throttle()
        self.pass_over_log = Throttle()
        self.cap_log = Throttle()
        self.passed_over = {}      # (pid, starttime) -> until when it is not chosen
        self.open_failures = 0     # consecutive victims passed over: the back-off grows
        self.kill_times = []       # clock() of recent kills, for KILLS_PER_WINDOW
        self.kill_wait_s = KILL_WAIT_S
        self.kills = 0
        self.metrics = None         # --metrics-file: a Metrics
        self.trend = Trend()
        self.rule = None            # the rule behind the last decision (see KILL_RULES)
        self.fill = fill or FillModel()
        self.last_avail_kib, self.last_exact, self.last_s = 0, None, 0.0
        self.far = False            # the last step's reading was far from every level
        self.near_kib = -1          # at or below this available memory: near a level
        self.armed = None
        self.next_arm = 0.0
        self.unreaped = []          # pids of killed calibration children, reaped by the loop

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
        if self.waiter is not None:
            # cgroup v1: wake when usage crosses into the range that needs exact readings.
            self.waiter.watch_threshold(self.sensor.threshold_event_fd(self.calls, self.th))
        return True

    def check_now(self):
        """Return what an exact reading calls for now (0, SIGTERM, SIGKILL)."""
        self.sensor.read_exact(self.reading, self.th)
        return self.decide(self.clock())

    def decide(self, now):
        """Return what self.reading calls for, after adding it to the trend; set self.rule."""
        r, th = self.reading, self.th
        if th.thrash_stall_ms is not None:
            self.trend.add(now, r, th.thrash_horizon_s)
        sig, self.rule = decide_rule(r, th, self.trend) if r.exact else (0, None)
        return sig

    def trigger(self):
        """Return the kill line's why: the rule, its figures and the reading."""
        return describe_trigger(self.reading, self.th, self.trend)

    # -- one poll -----------------------------------------------------------
    def step(self):
        """Read, decide, act; return how long to sleep before the next poll (s)."""
        self.far = False    # until this step ends far from every level (not on errors, acts)
        r = self.sensor.read(self.reading, self.th)
        self.refresh_thresholds()
        th = self.th
        now = self.clock()
        sig = self.decide(now)
        if sig:
            if self.log.verbose:
                self.log.debug('poll: %s -> %s' % (self.trigger(), SIGNAL_NAMES[sig]))
            return self.act(sig, now)
        if th.warn_kib >= 0 and r.exact and r.mem_available_kib <= th.warn_kib \
                and self.notifier is not None:
            self.notifier.warn_low(r, now)
        if self.settings.report_interval_s and now >= self.next_report:
            self.next_report = now + self.settings.report_interval_s
            self.log.info(self.report_line())
            if self.metrics is not None:
                self.write_metrics(now)
        if self.metrics is not None and now >= self.metrics.next_write_s:
            self.write_metrics(now)
        delay = self.next_sleep_s(r, now)
        if self.trend.stalling:
            delay = min(delay, THRASH_POLL_S)   # measure the stall windows, do not guess them
        # Above near_kib no level-bound rule can fire (every level, PSI's and --warn's
        # too, is below); the thrashing rule can, from exact readings, and a stall it
        # counts is measured by full steps every THRASH_POLL_S.
        self.far = r.mem_available_kib > self.near_kib and not self.trend.stalling
        # Whole-group kills gather their members at the kill: nothing to pre-arm.
        if not self.far and now >= self.next_arm and not (self.settings.kill_pgroup or
                                                         self.settings.kill_cgroup):
            self.arm(now)
        elif self.far and self.armed is not None:
            self.disarm()
        if self.log.verbose:
            self.log.debug('poll: %s mem_available=%s%s psi_some=%s stall=%dms left=%s -> '
                           'nothing; next in %.0f ms'
                           % ('exact' if r.exact else 'cheap', format_kib(r.mem_available_kib),
                              '' if r.exact else ' (lower bound)', r.psi_some_avg10,
                              self.trend.stall_ms(), 'never' if self.trend.left_s is None
                              else '%.1fs' % self.trend.left_s, delay * 1000))
        return delay

    def next_sleep_s(self, r, now):
        """Return the schedule's sleep after reading r at clock time now; learn from the drop."""
        if r.exact == self.last_exact:
            self.fill.learn(self.last_avail_kib - r.mem_available_kib, now - self.last_s, now)
        self.last_avail_kib, self.last_exact, self.last_s = r.mem_available_kib, r.exact, now
        return sleep_time_s(r, self.th, self.fill.rate_kib_s)

    def schedule_s(self):
        """Return the schedule's sleep for the current reading (no learning: not a poll)."""
        return sleep_time_s(self.reading, self.th, self.fill.rate_kib_s)

    def full_step_due_s(self):
        """Return how soon the idle loop must give way to a full step: reports, metrics."""
        now = self.clock()
        due = IDLE_STEP_EVERY_S
        if self.settings.report_interval_s:
            due = min(due, self.next_report - now)
        if self.metrics is not None:
            due = min(due, self.metrics.next_write_s - now)
        return max(POLL_FLOOR_S, due)     # a tiny -r: a report per poll, not a spin

    def idle(self, delay_s, budget_s):
        """Sleep delay_s, then keep polling cheaply while the readings stay far from every level.

        The idle wake-up is one poll(2), one cheap reading and the schedule;
        it returns to step() when a reading comes near a level or the
        totals change, when a signal arrives, or after budget_s of sleep
        (thresholds, reports, the metrics file, the watchdog).
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
                try:
                    r = read(reading, th)
                except Exception:   # step() reads again, inside poll_once's guard, and says why
                    return
                if r.mem_available_kib <= near_kib or r.mem_total_kib != th.mem_total_kib \
                        or r.swap_total_kib != th.swap_total_kib:
                    return
                delay_s = self.next_sleep_s(r, clock())
                if delay_s >= budget_s - slept_s:
                    # The full step is due before the next wake-up: take it now, not
                    # after one more short wake-up (a big idle box wakes once per sleep).
                    return
        finally:
            if far is not None:
                far.release()

    # -- the victim, ready before it is needed --------------------------------
    def arm(self, now):
        """Rank the processes now and hold the victim, so that a kill needs no ranking."""
        s = self.settings
        started = self.clock()
        exact = self.sensor.read_exact(Reading(), self.th)
        processes = [p for p in scan_processes(s.proc, self.policy, self.sensor.member_pids())
                     if self.passed_over.get((p.pid, p.starttime), 0) <= now]
        victim, skipped, runner_up = rank_for_arming(processes, self.policy)
        old, self.armed = self.armed, None
        if old is not None and (victim is None or not exact.exact or old.victim.pid != victim.pid
                                or old.victim.starttime != victim.starttime):
            old.target.close()     # not reused below: a pidfd would leak
            old = None
        if victim is not None and exact.exact:
            if old is not None:
                target = old.target
                target.victim = target.members[0] = victim
            else:
                target = Target(victim, self.calls, s.proc)
            if old is not None or target.open():
                victim.cmdline = read_cmdline(s.proc, victim.pid)
                ends = [until for until in self.passed_over.values() if until > now]
                self.armed = ArmedVictim(target, skipped, runner_up, exact, now,
                                         min(ends) if ends else None)
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
        victim = armed.victim
        if self.passed_over.get((victim.pid, victim.starttime), 0) > now:
            why = 'passed over after a failed kill'
        else:
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

    def write_metrics(self, now, up=1):
        """--metrics-file: write an exact reading now; the next periodic write a minute on."""
        self.sensor.read_exact(self.reading, self.th)
        self.metrics.next_write_s = now + METRICS_EVERY_S
        return self.metrics.write(self.metrics.render(self.reading, self.th, up), self.log, now)

    # -- acting -------------------------------------------------------------
    def act(self, sig, now):
        """Choose a victim and kill it; return the seconds to sleep afterwards.

        `now` is the clock time of the reading that called for sig.  A victim
        pre-armed near the level (see arm) is used when take_armed finds it
        still valid for this very reading: no ranking and no re-read.
        """
        if self.settings.dry_run and now < self.next_dry_run_log:
            return self.schedule_s()
        if self.capped(sig, now):
            return self.capped_sleep_s()
        armed = self.take_armed(now)
        if armed is not None:
            victim, skipped, target, how = armed.victim, armed.skipped, armed.target, 'pre-armed'
        else:
            victim, skipped = self.choose(now)
            if victim is None:
                return NO_VICTIM_RETRY_S
            sig = self.still_needed(victim)
            if not sig:
                return self.schedule_s()
            if victim.cmdline is None:
                victim.cmdline = read_cmdline(self.settings.proc, victim.pid)
            target = self.make_target(victim)
            how = 'full ranking'
        if self.settings.dry_run:
            target.close()
            return self.dry_run_report(sig, victim, skipped, target, now)
        if armed is None and not target.open():
            return self.pass_over(victim, UNOPENABLE_RETRY_S, 'exited, was replaced or could '
                                  'not be opened before the signal', now)
        self.open_failures = 0
        # The helpers' facts name the user (a passwd lookup): they are taken
        # right after the signal (kill's announce), before it only for -P.
        fields = {}
        try:
            if self.notifier is not None and self.settings.exec_before:
                fields.update(victim_fields(victim, sig, self.reading, self.user_name))
                sig = self.before_hook(victim, sig, fields)
                if not sig:
                    return self.schedule_s()
            result = self.kill(target, sig, skipped, now, how, fields)
        finally:
            target.close()
        return self.after(victim, target, result, fields, now)

    def capped(self, sig, now):
        """Return True if KILLS_PER_WINDOW kills happened lately and sig is only SIGTERM."""
        while self.kill_times and self.kill_times[0] <= now - KILL_CAP_WINDOW_S:
            self.kill_times.pop(0)
        if sig == signal.SIGKILL or len(self.kill_times) < KILLS_PER_WINDOW:
            return False
        if self.cap_log.ready(now):
            self.log.warning('memory is low (%s) but %d processes were killed in the last '
                             '%.0f s: no more kills until the SIGKILL level or %.0f s from now'
                             '%s' % (self.trigger(),
                                     len(self.kill_times), KILL_CAP_WINDOW_S,
                                     self.kill_times[0] + KILL_CAP_WINDOW_S - now,
                                     self.cap_log.suppressed_text()))
        return True

    def capped_sleep_s(self):
        """Return how long the headroom above the SIGKILL level lasts at the model's fill rate."""
        headroom = max(0, self.reading.mem_available_kib - self.th.mem_kill_kib)
        return min(max(headroom / float(self.fill.rate_kib_s), POLL_FLOOR_S), NO_VICTIM_RETRY_S)

    def choose(self, now):
        """Return (victim or None, protected processes that outranked it); log when none."""
        for key, until in list(self.passed_over.items()):
            if until <= now:
                del self.passed_over[key]
        victim, skipped = find_victim(self.settings.proc, self.policy,
                                      self.sensor.member_pids(), self.passed_over)
        if victim is None and self.no_victim_log.ready(now):
            self.log.warning('memory is low (%s) but no process may be killed (%d protected, '
                             '%d passed over after failed kills); still watching%s' % (
                                 self.trigger(), len(skipped),
                                 len(self.passed_over), self.no_victim_log.suppressed_text()))
        return victim, skipped

    def still_needed(self, victim):
        """Return what memory calls for after the scan (0: it recovered; do not kill)."""
        wanted = self.check_now()
        if not wanted:
            self.log.info('memory recovered during the victim scan (%s): not killing '
                          'pid %d %s' % (self.trigger(), victim.pid,
                                         printable(victim.name)))
        return wanted

    def dry_run_report(self, sig, victim, skipped, target, now):
        """--dry-run: log the kill that would have been; return the sleep."""
        self.next_dry_run_log = now + DRY_RUN_LOG_EVERY_S
        self.log.warning('dry run, no signal sent: ' + kill_line(
            sig, victim, self.trigger(), target.pgrp, target.cgroup))
        self.log.info('dry run: chose pid %d because: %s' % (
            victim.pid, describe_victim(victim, skipped, self.settings.sort_by_rss)))
        return self.schedule_s()

    def pass_over(self, victim, for_s, why, now):
        """Leave victim out of the next choices for for_s; return a growing back-off.

        Without this, a victim that cannot be opened, signalled or killed is
        chosen again at once, for ever: a spin, and the next candidate is
        never tried.
        """
        self.passed_over[(victim.pid, victim.starttime)] = now + for_s
        self.open_failures += 1
        if self.pass_over_log.ready(now):
            self.log.warning('pid %d %s: %s; trying the next candidate%s' % (
                victim.pid, printable(victim.name), why, self.pass_over_log.suppressed_text()))
        return min(KILL_POLL_S * 2 ** min(self.open_failures, 10), NO_VICTIM_RETRY_S)

    def before_hook(self, victim, sig, fields):
        """Run -P (if any) and return what memory calls for after it (0: do not kill)."""
        if self.notifier is None or not self.settings.exec_before:
            return sig
        self.notifier.before_kill(fields, lambda: self.check_now() == signal.SIGKILL)
        sig = self.check_now()      # the hook took time: memory may have recovered
        if not sig:
            self.log.info('memory recovered while the -P hook ran (%s): not killing pid %d'
                          % (self.trigger(), victim.pid))
        else:
            fields.update(victim_fields(victim, sig, self.reading, self.user_name))
        return sig

    def kill(self, target, sig, skipped, now, how, fields):
        """Signal the target, log the kill line, wait for the exit; return the KillResult.

        `how` says how the victim was found (-V's latency line); `fields`, the
        helpers' facts, is filled right after the signal when still empty.
        """
        victim = target.victim
        trigger = self.trigger()
        rule = self.rule
        signalled_at = [now]
        # A SIGTERM between the signal and its log line would leave a kill
        # that no log shows: it waits for the line (microseconds), then stops us.
        flags = self.flags
        deferred = [flags.interruptible]
        flags.interruptible = False

        def resume_stopping():
            if deferred and deferred.pop():
                flags.interruptible = True
                if flags.stop:
                    flags.interruptible = False
                    raise Stopping(flags.stop)

        def announce(sent_s):
            # kill_and_wait's sent_s is on the real clock; the loop's `now` on self.clock.
            signalled_at[0] = sent_s = self.clock()
            self.log.warning(kill_line(sig, victim, trigger, target.pgrp, target.cgroup))
            self.log.debug('chose pid %d because: %s' % (
                victim.pid, describe_victim(victim, skipped, self.settings.sort_by_rss)))
            self.log.debug('latency: %.1f ms from the deciding reading to the signal (%s)'
                           % ((sent_s - now) * 1000, how))
            resume_stopping()
            if not fields:
                fields.update(victim_fields(victim, sig, self.reading, self.user_name))
        try:
            result = kill_and_wait(target, sig, self.check_now, self.log,
                                   wait_s=self.kill_wait_s, announce=announce)
        finally:
            resume_stopping()     # when no signal went out (announce never ran)
        if result.signal and self.metrics is not None:
            self.metrics.count_kill(result.signal, rule, signalled_at[0] - now)
        return result

    def after(self, victim, target, result, fields, now):
        """Log how the kill ended, let memory settle, tell people; return the sleep."""
        if not result.signal:     # nothing was sent: no kill
            if target.error == errno.ESRCH:
                return KILL_POLL_S       # it exited by itself: look again soon
            return self.pass_over(victim, UNOPENABLE_RETRY_S, result.note, now)
        self.kills += 1
        self.kill_times.append(now)
        self.trend.clear()    # the stall so far was this victim's: the next one starts afresh
        if not result.exited:
            if result.signal == signal.SIGKILL:
                self.passed_over[(victim.pid, victim.starttime)] = now + UNKILLABLE_RETRY_S
                self.log.warning('pid %d %s: %s; passing it over for %.0f s' % (
                    victim.pid, printable(victim.name), result.note, UNKILLABLE_RETRY_S))
            else:
                self.log.warning('pid %d %s: %s' % (victim.pid, printable(victim.name),
                                                    result.note))
        else:
            self.log_exit(victim, result)
            if self.notifier is not None:
                fields['signal'] = SIGNAL_NAMES.get(result.signal, str(result.signal))
                self.notifier.after_kill(fields)
        if self.metrics is not None:     # the victim is gone: writing delays nothing now
            self.write_metrics(self.clock())
        return 0.0

    def log_exit(self, victim, result):
        """Log the exit, let memory settle (settle()), and log what it came back to."""
        self.sensor.read_exact(self.reading, self.th)
        before = percent_of(self.reading.mem_available_kib, self.reading.mem_total_kib)
        self.log.info('exited: pid=%d name="%s" signal=%s after=%.2fs mem_available=%.1f%%' % (
            victim.pid, printable(victim.name), SIGNAL_NAMES.get(result.signal, result.signal),
            result.elapsed_s, before))
        settled_s = self.settle()
        self.log.info('settled: mem_available=%.1f%% %.2fs after the exit of pid %d (%.1f%% '
                      'at the exit)' % (percent_of(self.reading.mem_available_kib,
                                                   self.reading.mem_total_kib),
                                        settled_s, victim.pid, before))

    def settle(self):
        """Wait (at most SETTLE_S) for memory to come back above the levels; return the seconds.

        Returns at once when the exit freed enough (the usual case); when it
        did not (tmpfs, shm), the wait keeps the next kill from following in
        milliseconds, before the kernel has given back what it will.
        """
        start = time.monotonic()
        while True:
            if not self.check_now():
                break
            waited = time.monotonic() - start
            if waited >= SETTLE_S:
                break
            time.sleep(min(KILL_POLL_S, SETTLE_S - waited))
        return time.monotonic() - start

    def make_target(self, victim):
        """Return the Target: the victim, or its cgroup/process group when that is safe."""
        if self.settings.kill_cgroup:
            target, refusal = make_cgroup_target(
                victim, self.calls, self.settings.proc, self.policy,
                getattr(self.sensor, 'path', None), getattr(self.sensor, 'version', None))
            if target is not None:
                return target
            self.log.warning('--kill-cgroup: not killing cgroup %s; killing pid %d alone'
                             % (refusal, victim.pid))
            return Target(victim, self.calls, self.settings.proc)
        if not self.settings.kill_pgroup or not 0 < victim.pgrp <= PID_MAX_LIMIT:
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
    def poll_once(self, max_sleep_s=POLL_CEILING_S):
        """One turn of the loop: signals, a step, helpers, watchdog, sleep."""
        helpers, service = self.helpers, self.service
        try:
            if self.flags.hup or self.flags.usr1:
                self.handle_flags()
            delay = self.step()
        except Exception as exc:   # a bug or a kernel surprise must not end the watch
            self.log.error('unexpected error, still watching: %s' % describe_exception(exc))
            delay = NO_VICTIM_RETRY_S
        if helpers is not None and helpers.running:
            helpers.poll()
            delay = min(delay, POLL_CEILING_S / 3)    # reap and time helpers out promptly
        if self.unreaped:      # a calibration child that was dying slowly
            self.unreaped = [pid for pid in self.unreaped if not _reap(pid)[0]]
        if service is not None:
            service.ping()
        if delay > 0 and not self.flags.stop:
            # -V logs every poll, and running helpers are polled: both take full steps.
            budget = min(self.full_step_due_s(), max_sleep_s)
            if self.far and not self.log.verbose and not (helpers and helpers.running):
                self.idle(min(delay, budget), budget)
            else:
                self.sleep(min(delay, max_sleep_s))

    def handle_flags(self):
        """Act on SIGHUP (reopen the log) and SIGUSR1 (log a status)."""
        if self.flags.hup:
            self.flags.hup = False
            self.log.reopen()
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
        flags = self.flags
        flags.interruptible = not flags.stop
        try:
            max_sleep_s = POLL_CEILING_S if self.service is None else self.service.max_sleep_s()
            while not flags.stop:
                self.poll_once(max_sleep_s)
        except Stopping:
            pass
        finally:
            flags.interruptible = False
        self.log.info(stop_line(self.flags.stop, self.kills))
        if self.metrics is not None:
            self.write_metrics(self.clock(), up=0)
        return EXIT_OK


def stop_line(signum, kills):
    """Return the last log line of a daemon stopped by signum."""
    return '%s received: exiting after %d kill(s)' % (
        {signal.SIGTERM: 'SIGTERM', signal.SIGINT: 'SIGINT'}.get(signum, str(signum)), kills)


def describe_exception(exc):
    """Return 'Type: message (file:line in function)' for one log line."""
    import traceback
    frames = traceback.extract_tb(exc.__traceback__)
    where = ' (%s:%d in %s)' % (os.path.basename(frames[-1][0]), frames[-1][1],
                                frames[-1][2]) if frames else ''
    return '%s: %s%s' % (type(exc).__name__, exc, where)


def kill_line(sig, victim, trigger, pgrp=None, cgroup=None):
    """Return the one greppable log line of a kill."""
    return ('kill: %s %s%spid=%d uid=%d name="%s" oom_score=%d oom_score_adj=%d rss=%s '
            'cmdline="%s" %s' % (
                SIGNAL_NAMES.get(sig, sig), '' if pgrp is None else 'pgrp=%d ' % pgrp,
                '' if cgroup is None else 'cgroup="%s" ' % printable(cgroup, PATH_TEXT_MAX),
                victim.pid, victim.uid, printable(victim.name), victim.oom_score,
                victim.oom_score_adj, format_kib(victim.rss_kib).replace(' ', ''),
                printable(victim.cmdline or '', 300), trigger))


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
        self.thrash_stall_ms = DEFAULT_THRASH_STALL_MS
        self.thrash_horizon_s = DEFAULT_THRASH_HORIZON_S
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
        self.kill_cgroup = False
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
        self.metrics_file = None
        self.install = None            # 'install' or 'uninstall'
        self.install_root = '/'
        self.init_system = 'auto'
        self.install_args = ()
        self.print_unit = False
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
  bustd --install [OPTIONS]  (install this file, start it at boot and now)

DESCRIPTION
  bustd watches available memory, free swap and memory pressure (PSI).
  When both available memory and free swap fall to their SIGTERM levels
  it sends SIGTERM to one victim (highest oom_score, ties: larger RSS),
  escalating to SIGKILL when memory reaches the SIGKILL levels or the
  victim ignores SIGTERM for 5 s.  It also sends SIGTERM on thrashing:
  when tasks stalled on memory (PSI "full") for --thrash ms within 30 s
  while memory demand kept growing toward running out (a burst that
  swap absorbs stops growing, and is spared); without swap, when PSI
  "some" avg10 reaches --psi while available memory is below
  --psi-mem-max.  It waits for each victim to exit (at most 10 s)
  before choosing another, and never kills PID 1, kernel threads,
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
  early.  While tasks stall on memory it polls at least every 100 ms, so
  the thrashing rule measures its windows.

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
  bustd -n --kill-cgroup           kill the victim's whole service/scope
  bustd -n --metrics-file /run/bustd/bustd.prom    for node_exporter
  sudo python3 bustd.py --install -m 15,8          install, with options
  sudo python3 bustd.py --install --dry-run        only print what it does

INSTALL
  --install copies this file to /usr/local/sbin/bustd (atomically) and
  sets it up for the init system (--init, default detected): systemd
  (bustd.service, /etc/default/bustd), OpenRC (/etc/init.d/bustd,
  /etc/conf.d/bustd), runit (/etc/sv/bustd), BusyBox init or none (prints
  the line for /etc/inittab or your boot scripts, starts it now with
  --pidfile /run/bustd.pid).  Options given with it become the daemon's;
  an existing options file is kept.  It prints every file it writes; again,
  it upgrades and restarts; --uninstall removes what it wrote.

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
     use, log file not writable; --install/--uninstall without root or
     one of its steps failed
  2  bad command line (the message names the flag and the fix)'''

DEFAULT_LOG_FILE = '/var/log/bustd.log'

# Names no pattern should match all of: a -u/--ignore pattern that matches
# every one of them protects every process, and bustd could never kill.
PROBE_NAMES = ('a', 'hog', 'python3', 'Z9', 'x-y_z.1', 'chrome --type=renderer')


def _arg_type(parse, name, example):
    """Wrap a ValueError-raising parser as an argparse type that refuses empty values."""
    import argparse

    def convert(text):
        if not text.strip():
            raise argparse.ArgumentTypeError('empty value; give e.g. %s' % example)
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


def _thrash_ms(text):
    if text.strip().lower() in ('off', 'no', 'none'):
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError('%r is not a whole number of milliseconds; give e.g. --thrash 8000, '
                         'or off' % text)
    if not 0 < value <= THRASH_WINDOW_S * 1000:
        raise ValueError('%s ms is not between 1 and %d (the stall is counted over %g s); '
                         'give e.g. --thrash 8000' % (text, THRASH_WINDOW_S * 1000,
                                                      THRASH_WINDOW_S))
    return value


def _horizon_s(text):
    try:
        value = float(text)
    except ValueError:
        raise ValueError('%r is not a number of seconds; give e.g. --thrash-horizon 60' % text)
    if not 0 < value <= 86400:
        raise ValueError('%s is not between 0 and 86400 seconds; give e.g. '
                         '--thrash-horizon 60' % text)
    return value


def _compile_regex(text):
    """Return the compiled pattern; ValueError (one line) for anything re cannot compile."""
    import re
    import warnings
    try:
        with warnings.catch_warnings():
            # "Possible nested set" FutureWarnings: valid patterns, noise in a daemon's log.
            warnings.simplefilter('ignore')
            return re.compile(text)
    except (re.error, RecursionError, OverflowError, MemoryError, ValueError) as exc:
        raise ValueError('bad regular expression %r: %s; e.g. --prefer "^(firefox|chrome)$"'
                         % (printable(text, 60), printable(str(exc), 100) or
                            type(exc).__name__))


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise ValueError('%r is not a number of seconds; e.g. -r 60' % text)
    if not 0 <= value < 1e9:
        raise ValueError('%r is out of range: give 0 (off) to 999999999 seconds, '
                         'e.g. -r 3600' % text)
    return value


def _executable(text):
    if not os.path.isabs(text):
        raise ValueError('%r is not an absolute path; give e.g. /usr/local/bin/on-oom' % text)
    if not (os.path.isfile(text) and os.access(text, os.X_OK)):
        raise ValueError('%s is not an executable file; check the path and chmod +x it' % text)
    return text


def _template(text):
    """Return text if it formats with plain fields of the real types ({pid:>6}: yes,
    {name.__class__}: no); ValueError otherwise."""
    import _string
    import re
    try:
        for _, field, spec, _ in _string.formatter_parser(text):
            if field is not None and field not in TEMPLATE_FIELDS:
                raise KeyError(field)
            # {pid:999999999} would allocate a GiB at every kill (and here).
            if spec and ('{' in spec or any(len(n.lstrip('0')) > 3
                                            for n in re.findall(r'[0-9]+', spec))):
                raise ValueError('{%s:%s}: a nested field, or a width or precision above '
                                 '999' % (field, printable(spec, 40)))
        text.format_map(TEMPLATE_EXAMPLE_LARGEST)
        if len(text.format_map(TEMPLATE_EXAMPLE)) > TEMPLATE_MAX_CHARS:
            raise ValueError('it renders to more than %d characters' % TEMPLATE_MAX_CHARS)
    except KeyError as exc:
        raise ValueError('unknown field {%s}; use %s (plain names, a format spec may follow '
                         'a colon: {pid:>7})' % (exc.args[0], ' '.join(
                             '{%s}' % f for f in TEMPLATE_FIELDS)))
    except (ValueError, IndexError, AttributeError, TypeError, OverflowError) as exc:
        raise ValueError('bad template %r: %s; write fields as {name}'
                         % (printable(text, 80), exc))
    return text


def _path(text):
    return text


def _globs(text):
    """Return text if every '|'-separated glob in it is non-empty."""
    if any(not g for g in text.split('|')):
        raise ValueError("%r has an empty glob; separate names with one '|', e.g. "
                         "-u 'sshd|Xorg'" % text)
    return text


def default_text(action, defaults):
    """Return how --help and the README show an option's default ('' when it has none)."""
    if not action.option_strings or action.dest in ('help', 'version'):
        return ''
    if action.nargs == 0:   # a switch
        return 'off'
    value = getattr(defaults, action.dest)
    if value is None or value == ():
        return ''
    if isinstance(value, tuple):
        return ','.join('%g' % v for v in value)
    if isinstance(value, float):
        return '%g' % value
    return str(value)


def build_parser():
    """Return the argparse parser (imported here: the daemon does not keep it loaded).

    Every option's dest is a Settings attribute and its default is Settings()'s
    (argparse keeps none: options not given are absent from the namespace), so
    a default lives in one place; --help shows it, and a test holds the README
    to it.  A new option is a Settings attribute (with its default), an option()
    line here, a README row and a sample value in the tests; they say what is
    missing.
    """
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message):
            raise UsageError(message)

        def _print_message(self, message, file=None):
            # argparse >= 3.7 drops write errors: --help > /dev/full must say so.
            if message:
                (file or _stdout()).write(message)

    parser = Parser(prog=PROG, description=DESCRIPTION, add_help=False,
                    argument_default=argparse.SUPPRESS,
                    epilog=EPILOG.format(
                        protected='\n  '.join(_wrap(' '.join(DEFAULT_UNKILLABLES), 70)),
                        log_file=DEFAULT_LOG_FILE),
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    pct_pair = _arg_type(lambda t: parse_pair(t, parse_percent), 'PERCENT[,KILL_PERCENT]',
                         '10,5')
    size_pair = _arg_type(lambda t: parse_pair(t, parse_size_kib), 'SIZE[,KILL_SIZE]',
                          '1G,512M')
    regex = _arg_type(_compile_regex, 'REGEX', "'^(chrome|firefox)$'")
    template = _arg_type(_template, 'TEMPLATE', "'{name} was killed'")
    percent = _arg_type(parse_percent, 'PERCENT', '15')
    program = _arg_type(_executable, 'PATH', '/usr/local/bin/on-oom')
    defaults = Settings()

    def option(group, *flags, **kw):
        action = group.add_argument(*flags, **kw)
        shown = default_text(action, defaults)
        if shown and action.nargs != 0:   # a switch is off unless given: no need to say
            action.help += ' (default %s)' % shown.replace('%', '%%')
        return action

    g = parser.add_argument_group('when to act')
    option(g, '-m', '--mem-min', dest='mem_percent', metavar='PERCENT[,KILL]', type=pct_pair,
           help='available memory levels in %% of RAM')
    option(g, '-s', '--swap-min', dest='swap_percent', metavar='PERCENT[,KILL]',
           type=pct_pair, help='free swap levels in %% of swap')
    option(g, '-M', '--mem-min-size', dest='mem_size_kib', metavar='SIZE[,KILL]',
           type=size_pair, help='available memory levels as sizes (512M, 1G; plain = KiB)')
    option(g, '-S', '--swap-min-size', dest='swap_size_kib', metavar='SIZE[,KILL]',
           type=size_pair, help='free swap levels as sizes')
    option(g, '-p', '--psi', dest='psi_avg10', metavar='AVG10|off',
           type=_arg_type(_psi_value, 'AVG10', '25'),
           help='SIGTERM when memory PSI "some" avg10 reaches this')
    option(g, '--psi-mem-max', dest='psi_mem_max_percent', metavar='PERCENT', type=percent,
           help='...while available memory is below this %%')
    option(g, '--thrash', dest='thrash_stall_ms', metavar='MS|off',
           type=_arg_type(_thrash_ms, 'MS', '--thrash 8000'),
           help='SIGTERM after MS of memory stall (PSI "full") within %g s while '
                'memory demand grows toward exhausting RAM and swap' % THRASH_WINDOW_S)
    option(g, '--thrash-horizon', dest='thrash_horizon_s', metavar='SECONDS',
           type=_arg_type(_horizon_s, 'SECONDS', '--thrash-horizon 60'),
           help='...counting stall only while RAM and swap would run out within '
                'SECONDS at the current growth')
    option(g, '--cgroup', metavar='PATH|auto',
           type=_arg_type(_path, 'PATH', '--cgroup system.slice/build.service'),
           help="watch one cgroup (v1 or v2) and kill only inside it; auto = bustd's own "
                'cgroup; a relative PATH is inside the memory hierarchy')

    g = parser.add_argument_group('whom to kill')
    option(g, '-u', '--unkillables', metavar='GLOB[|GLOB...]', action='append',
           type=_arg_type(_globs, 'GLOB', "'sshd|Xorg'"),
           help='never kill processes whose name matches a glob (repeatable)')
    option(g, '--ignore', dest='ignore_re', metavar='REGEX', type=regex,
           help='never kill processes whose name matches REGEX')
    option(g, '--ignore-root-user', action='store_true',
           help='never kill processes owned by root')
    option(g, '--no-default-unkillables', dest='default_unkillables', action='store_false',
           help='drop the built-in protected list (see below)')
    option(g, '--prefer', dest='prefer_re', metavar='REGEX', type=regex,
           help='kill matching names first (oom_score +%d)' % PREFER_ADJUST)
    option(g, '--avoid', dest='avoid_re', metavar='REGEX', type=regex,
           help='kill matching names last (oom_score -%d)' % PREFER_ADJUST)
    option(g, '--match', choices=('name', 'cmdline'),
           help='what -u/--ignore/--prefer/--avoid see: the process name '
                'or the whole command line, NULs as spaces')
    option(g, '--sort-by-rss', action='store_true',
           help='choose the largest RSS instead of the highest oom_score')
    option(g, '-g', '--kill-pgroup', action='store_true',
           help="signal the victim's whole process group (refused for a group "
                "with PID 1, bustd, bustd's session or a protected process)")
    option(g, '--kill-cgroup', action='store_true',
           help="kill the victim's whole leaf cgroup (a service, an app scope, a "
                "container): cgroup.kill, else every member; refused for the root "
                "cgroup, init.scope, bustd's own, the --cgroup root or one holding "
                "a protected process")
    option(g, '--list', '--tasks', dest='list', action='store_true',
           help='print who would be killed, in order, and exit')

    g = parser.add_argument_group('telling people')
    option(g, '--notify', action='store_true',
           help="desktop notification to every logged-in user after a kill")
    option(g, '--notify-title', metavar='TEMPLATE', type=template,
           help='notification title')
    option(g, '--notify-body', metavar='TEMPLATE', type=template,
           help='notification body; fields: %s' % ' '.join(
               '{%s}' % f for f in TEMPLATE_FIELDS))
    option(g, '--warn', dest='warn_percent', metavar='PERCENT', type=percent,
           help='warn (log, and notify with --notify) when available memory falls '
                'below PERCENT, at most once a minute')
    option(g, '-N', '--exec-after', metavar='PATH', type=program,
           help='run PATH after each kill (BUSTD_* environment)')
    option(g, '-P', '--exec-before', metavar='PATH', type=program,
           help='run PATH just before each kill; the kill waits at most %g s'
                % BEFORE_HOOK_BUDGET_S)

    g = parser.add_argument_group('running')
    option(g, '-n', '--no-daemon', dest='daemon', action='store_false',
           help='stay in the foreground, log to stderr (for systemd, containers)')
    option(g, '--pidfile', metavar='PATH', type=_arg_type(_path, 'PATH', '/run/bustd.pid'),
           help='write the pid here and hold a lock on it (removed on exit)')
    option(g, '--log-file', metavar='PATH',
           type=_arg_type(_path, 'PATH', '/var/log/bustd.log'), help='log to this file')
    option(g, '--syslog', action='store_true', help='log to syslog even in the foreground')
    option(g, '-V', '--verbose', action='store_true',
           help='debug output: every poll, why each victim was chosen, and the time '
                'from the deciding reading to the signal')
    option(g, '-r', '--report-interval', dest='report_interval_s', metavar='SECONDS',
           type=_arg_type(_seconds, 'SECONDS', '-r 3600'),
           help='log a memory line every SECONDS (0 = off)')
    option(g, '--dry-run', '--dryrun', dest='dry_run', action='store_true',
           help='decide and log, but send no signal and run no -P/-N hook or '
                'notification (logged at most once a second)')
    option(g, '--metrics-file', metavar='PATH',
           type=_arg_type(_path, 'PATH', '/var/lib/node_exporter/bustd.prom'),
           help='write Prometheus metrics here (node_exporter textfile collector): '
                'at start, after each kill, with -r, and every minute')
    option(g, '--proc', metavar='DIR', type=_arg_type(_path, 'DIR', '/proc'),
           help='read processes and memory from DIR (e.g. a host /proc mounted in '
                'a container)')
    option(g, '--sys', dest='sys_fs', metavar='DIR', type=_arg_type(_path, 'DIR', '/sys'),
           help='sysfs root for cgroup discovery and zram figures')

    g = parser.add_argument_group('installing (curl-and-run)')
    option(g, '--install', action='store_const', const='install',
           help='copy this file to %s and start it at boot and now with the other '
                'options given (systemd, OpenRC, runit, BusyBox init); again: upgrade '
                'and restart' % INSTALL_BIN)
    option(g, '--uninstall', dest='install', action='store_const', const='uninstall',
           help='stop bustd and remove what --install wrote (and say what is left)')
    option(g, '--root', dest='install_root', metavar='DIR',
           type=_arg_type(_path, 'DIR', '--root /mnt/image'),
           help='install into the tree at DIR (an image); nothing is started')
    option(g, '--init', dest='init_system', metavar='|'.join(('auto',) + INIT_SYSTEMS),
           choices=('auto',) + INIT_SYSTEMS,
           help='the init system to install for (auto: detected)')
    option(g, '--print-unit', action='store_true',
           help='print the systemd unit --install writes, and exit')
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


def _attach_negative_values(argv, parser):
    """Return argv with '-M -1G' written '-M=-1G'.

    argparse reads a value that starts with '-' as the next option, and
    says "expected one argument": joined, the value reaches its parser,
    whose message names the real problem.
    """
    takes_value = set(s for a in parser._actions if a.option_strings and a.nargs is None
                      for s in a.option_strings)
    out = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == '--':
            return out + argv[i:]
        if (arg in takes_value and i + 1 < len(argv) and argv[i + 1][:1] == '-' and
                argv[i + 1][1:2] in tuple('0123456789.')):
            out.append(arg + '=' + argv[i + 1])
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def parse_settings(argv):
    """Return Settings from argv; raise UsageError (or SystemExit for --help/--version)."""
    parser = build_parser()
    given = vars(parser.parse_args(_attach_negative_values(list(argv), parser)))
    s = Settings(**given)
    if 'mem_size_kib' in given and 'mem_percent' not in given:
        s.mem_percent = (100.0, 100.0)   # the size alone decides, as in earlyoom
    if 'swap_size_kib' in given and 'swap_percent' not in given:
        s.swap_percent = (100.0, 100.0)
    s.unkillables = tuple(g for value in s.unkillables for g in value.split('|'))
    # Absolute: a daemon changes to / before it reads them.
    for name in ('pidfile', 'log_file', 'metrics_file', 'proc', 'sys_fs',
                 'install_root'):
        if getattr(s, name) is not None:
            setattr(s, name, os.path.abspath(getattr(s, name)))
    if s.install:
        s.install_args = install_options(argv)
        if s.list:
            raise UsageError('--%s and --list: choose one' % s.install)
    elif 'install_root' in given or 'init_system' in given:
        raise UsageError('--root and --init only apply with --install or --uninstall')
    if s.kill_pgroup and s.kill_cgroup:
        raise UsageError('-g/--kill-pgroup and --kill-cgroup: choose one')
    if s.log_file and s.syslog:
        raise UsageError('--log-file and --syslog: choose one log destination')
    if ('notify_title' in given or 'notify_body' in given) and not s.notify:
        raise UsageError('--notify-title/--notify-body only apply with --notify; add --notify')
    check_protects_something(s)
    return s


def check_protects_something(settings):
    """Raise UsageError if a -u glob or --ignore matches every name: nothing could be killed."""
    for pattern in settings.unkillables:
        if all(glob_match(pattern, name) for name in PROBE_NAMES):
            raise UsageError("argument -u/--unkillables: %r matches every process name, so "
                             "bustd could never kill; name what to protect, e.g. -u 'sshd|Xorg'"
                             % pattern)
    if settings.ignore_re is not None and all(settings.ignore_re.search(name)
                                              for name in PROBE_NAMES):
        raise UsageError("argument --ignore: %r matches every process name, so bustd could "
                         "never kill; anchor it, e.g. --ignore '^(sshd|Xorg)$'"
                         % settings.ignore_re.pattern)


# ============================================================================
# Installer: --install / --uninstall for systemd, OpenRC, runit, BusyBox init
# ============================================================================

# Every file the installer writes is generated here, so a copied bustd.py is
# all an installation needs.  SYSTEMD_UNIT is the repository's bustd.service
# and OPTIONS_FILE its etc/default/bustd, byte for byte (a test compares them).
INSTALL_BIN = '/usr/local/sbin/bustd'
INSTALL_PIDFILE = '/run/bustd.pid'
# The start of this file's docstring: what --uninstall removes has it (Rust
# bustd, or the admin's own script, at the same path is left alone).
INSTALLED_MARK = b'bustd.py - an early userspace out-of-memory killer'
INIT_SYSTEMS = ('systemd', 'openrc', 'runit', 'busybox', 'none')

SYSTEMD_UNIT = '''\
# bustd.service: run bustd.py, the early out-of-memory killer, under systemd.
#
# Install:  sudo python3 bustd.py --install [OPTIONS]
#           (writes /usr/local/sbin/bustd, this file and /etc/default/bustd,
#           then enables and starts bustd; --uninstall undoes it).
# bustd.py carries this file: `bustd --print-unit` prints it, byte for byte.
# Options go in /etc/default/bustd (BUSTD_ARGS="..."), not here.

[Unit]
Description=bustd.py early out-of-memory killer
# Documentation: `bustd --help` and README.md.
# Start before most services, so it protects their start-up too.
DefaultDependencies=no
After=local-fs.target
Before=multi-user.target shutdown.target
Conflicts=shutdown.target

[Service]
# bustd sends READY=1 once it has taken its first reading, and WATCHDOG=1
# from its main loop: a hung bustd is killed and restarted.
Type=notify
NotifyAccess=main
WatchdogSec=30
EnvironmentFile=-/etc/default/bustd
ExecStart=/usr/local/sbin/bustd --no-daemon $BUSTD_ARGS
ExecReload=/bin/kill -HUP $MAINPID
Restart=always
RestartSec=1

# Stay alive and scheduled under memory pressure: the kernel's own OOM
# killer never picks bustd, and it outranks the processes it polices.
OOMScoreAdjust=-1000
Nice=-20
IOSchedulingClass=realtime

# Least privilege.  bustd runs as root but keeps only:
#   CAP_KILL      to signal processes of every user;
#   CAP_IPC_LOCK  for mlockall(): its pages stay in RAM when memory runs out.
# Not needed: CAP_SYS_RESOURCE (OOMScoreAdjust= above sets -1000 for it).
# Under hidepid=2/invisible /proc shows bustd only its own processes: then it
# can kill nothing else.  Add CAP_SYS_PTRACE to see them all (CAP_DAC_READ_SEARCH
# is not enough: hidepid checks ptrace access).
# With --notify, add CAP_SETUID CAP_SETGID: notify-send runs as each desktop user.
CapabilityBoundingSet=CAP_KILL CAP_IPC_LOCK
AmbientCapabilities=CAP_KILL CAP_IPC_LOCK
NoNewPrivileges=yes
SecureBits=noroot-locked
UMask=0077

# Read-only system, no home directories, no network (syslog, sd_notify and
# D-Bus are AF_UNIX sockets in the file system).
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateNetwork=yes
RestrictAddressFamilies=AF_UNIX
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectKernelTunables=yes
# --cgroup on a cgroup v1 host registers usage threshold events by writing
# cgroup.event_control: set ProtectControlGroups=no for that (or bustd polls).
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
# @system-service has mlockall and pidfd_open/pidfd_send_signal (@process);
# process_mrelease (Linux 5.15) is not in any group yet.
SystemCallFilter=@system-service pidfd_open pidfd_send_signal process_mrelease
SystemCallErrorNumber=EPERM
# No MemoryDenyWriteExecute=: ctypes (sysinfo, mlockall, syscalls) needs
# writable+executable memory for its call trampolines.

# --metrics-file /run/bustd/bustd.prom: systemd makes /run/bustd (writable
# despite ProtectSystem=strict; 0755 so node_exporter may read the file).
RuntimeDirectory=bustd
RuntimeDirectoryMode=0755

# Measured (README, Performance): 9.6 MiB resident once running, 15 MiB
# charged at the peak of start-up (Python compiles bustd.py); helpers (-N/-P
# hooks, notify-send) run in this cgroup too.  128 MiB leaves room for those.
MemoryMax=128M
MemorySwapMax=0
TasksMax=64

[Install]
WantedBy=multi-user.target
'''

OPTIONS_FILE = '''\
# /etc/default/bustd: options for bustd.service; see `bustd --help`.
# The service always runs `bustd --no-daemon $BUSTD_ARGS`.
# systemd splits BUSTD_ARGS at spaces and does NOT remove quotes, so write
# patterns without quotes or spaces (e.g. -u sshd|postgres).

BUSTD_ARGS=""

# Examples (keep one BUSTD_ARGS line):
# Act earlier: SIGTERM at 15 % available memory, SIGKILL at 8 %, but at most 2 GiB.
#BUSTD_ARGS="-m 15,8 -M 2G"
# A box with a big swap: act on memory alone, and on pressure above 40.
#BUSTD_ARGS="-s 100 -p 40"
# Never kill the database; kill browsers first.
#BUSTD_ARGS="-u postgres|redis-server --prefer ^(chrome|firefox)$"
# A build server: kill the whole make/ninja process group of the victim.
#BUSTD_ARGS="-g --avoid ^(sshd|tmux)$"
# Protect only what the kernel rules and this list say.
#BUSTD_ARGS="--no-default-unkillables -u init|sshd*"
# Run a hook after each kill, log memory every hour.
#BUSTD_ARGS="-N /usr/local/bin/on-oom-kill -r 3600"
# Watch one slice instead of the whole machine (see README: Containers and slices).
#BUSTD_ARGS="--cgroup /sys/fs/cgroup/build.slice"
'''

OPENRC_SCRIPT = '''\
#!/sbin/openrc-run
# /etc/init.d/bustd: bustd.py, the early out-of-memory killer, under OpenRC.
# Written by `bustd --install`; options go in /etc/conf.d/bustd.

name="bustd"
description="early out-of-memory killer"
supervisor="supervise-daemon"
command="/usr/local/sbin/bustd"
command_args="--no-daemon ${BUSTD_ARGS}"
respawn_delay=1
respawn_max=0
output_log="/var/log/bustd.log"
error_log="/var/log/bustd.log"

depend() {
	after localmount
	before local
}
'''

OPENRC_CONF = '''\
# /etc/conf.d/bustd: options for /etc/init.d/bustd; see `bustd --help`.
# OpenRC evaluates them as shell words: quote patterns ('sshd|postgres').

BUSTD_ARGS=""
'''

RUNIT_RUN = '''\
#!/bin/sh
# /etc/sv/bustd/run: bustd.py, the early out-of-memory killer, under runit.
# Written by `bustd --install`; options go in /etc/sv/bustd/conf.
BUSTD_ARGS=""
[ -r ./conf ] && . ./conf
set -f    # patterns such as sshd* reach bustd unexpanded
exec /usr/local/sbin/bustd --no-daemon --log-file /var/log/bustd.log $BUSTD_ARGS 2>&1
'''

RUNIT_CONF = '''\
# /etc/sv/bustd/conf: options for /etc/sv/bustd/run; see `bustd --help`.
# Split at spaces, not expanded: write patterns without quotes or spaces.

BUSTD_ARGS=""
'''

RUNIT_SERVICE_DIRS = ('/etc/service', '/var/service', '/run/runit/service', '/service')


class InstallStep(object):
    """One thing the installer does: write, link, remove, run, start, or say."""
    __slots__ = ('kind', 'path', 'data', 'mode', 'argv', 'text')

    def __init__(self, kind, path=None, data=None, mode=0o644, argv=None, text=None):
        self.kind = kind
        self.path = path
        self.data = data
        self.mode = mode
        self.argv = argv
        self.text = text


def running_init(root):
    """Return the init system running in the tree at root (its /run markers), or None."""
    for flavour, marker in (('systemd', '/run/systemd/system'), ('openrc', '/run/openrc'),
                            ('runit', '/run/runit')):
        if os.path.exists(root.rstrip('/') + marker):
            return flavour
    return None


def detect_init(root):
    """Return the init system of the tree at root: a running one first, then an installed one."""
    def there(*paths):
        return any(os.path.exists(root.rstrip('/') + p) for p in paths)
    if running_init(root):
        return running_init(root)
    if there('/sbin/openrc-run', '/usr/sbin/openrc-run'):
        return 'openrc'
    if there('/lib/systemd/systemd', '/usr/lib/systemd/systemd'):
        return 'systemd'
    if there('/sbin/runsvdir', '/usr/bin/runsvdir', '/usr/sbin/runsvdir'):
        return 'runit'
    if there('/etc/inittab'):
        return 'busybox'
    return 'none'


def install_options(argv):
    """Return the daemon options in argv: argv minus the installer's own flags.

    Raises UsageError for a value the options files cannot carry (spaces,
    quotes, backslashes, backquotes, $NAME): they split at spaces, unquoted.
    """
    import re
    own = ('--install', '--uninstall', '--dry-run', '--dryrun', '--no-daemon', '--print-unit')
    with_value = ('--root', '--init')
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        name = token.split('=', 1)[0]
        if token == '-n' or (name.startswith('--') and len(name) > 3 and any(
                o.startswith(name) for o in own) and '=' not in token):
            continue
        if name.startswith('--') and len(name) > 3 and any(o.startswith(name) for o in with_value):
            skip = '=' not in token
            continue
        # $NAME, ${..}, $(..) and the special parameters ($$, $?, $*, ...) expand in
        # the shell that sources OpenRC's and runit's options files.
        if re.search(r'[\s\'"\\`]|\$[\w{($?!#*@-]', token):
            raise UsageError('argument --install: %r cannot be written to an options file '
                             '(no spaces, quotes, backslashes or $NAME); write patterns '
                             'without them, e.g. -u sshd|postgres' % token)
        kept.append(token)
    return tuple(kept)


def sh_quote(token):
    """Return token as one shell word (single quotes where it has special characters)."""
    import re
    return token if re.match(r'[\w@%+=:,./-]+\Z', token) else "'%s'" % token


def options_words(args, quote=False):
    """Return args as the value of BUSTD_ARGS (each word shell-quoted with quote=True)."""
    return ' '.join(sh_quote(a) if quote else a for a in args)


def options_text(template, words):
    """Return an options file: the template with BUSTD_ARGS set to words."""
    return template.replace('BUSTD_ARGS=""', 'BUSTD_ARGS="%s"' % words, 1)


def options_in(text):
    """Return the BUSTD_ARGS value of an options file, or None."""
    for line in text.split('\n'):
        if line.startswith('BUSTD_ARGS="') and line.endswith('"'):
            return line[len('BUSTD_ARGS="'):-1]
    return None


def _read_text(path):
    data = read_file(path, 1 << 20)
    return None if data is None else data.decode('utf-8', 'replace')


def _options_step(path, template, args, quote=False):
    """Write the options file, or keep an existing one (and say so)."""
    current = _read_text(path)
    words = options_words(args, quote)
    if current is None:
        return [InstallStep('write', path, options_text(template, words))]
    note = 'kept %s (BUSTD_ARGS="%s")' % (path, options_in(current) or '?')
    if args and options_in(current) != words:
        note += ': your options were NOT written there; edit it, then restart bustd'
    return [InstallStep('say', text=note)]


def install_plan(flavour, root, args, program):
    """Return the InstallSteps of --install for flavour into root ('/' = this machine)."""
    at = root.rstrip('/')
    live = at == ''
    steps = [InstallStep('write', at + INSTALL_BIN, program, 0o755)]
    if flavour == 'systemd':
        unit = at + '/etc/systemd/system/bustd.service'
        steps.append(InstallStep('write', unit, SYSTEMD_UNIT))
        steps += _options_step(at + '/etc/default/bustd', OPTIONS_FILE, args)
        if live:
            steps += [InstallStep('run', argv=['systemctl', 'daemon-reload']),
                      InstallStep('run', argv=['systemctl', 'enable', 'bustd']),
                      InstallStep('run', argv=['systemctl', 'restart', 'bustd']),
                      InstallStep('say', text='see it work: journalctl -u bustd -f')]
        else:
            steps.append(InstallStep('link', at + '/etc/systemd/system/multi-user.target.wants/'
                                     'bustd.service', '/etc/systemd/system/bustd.service'))
    elif flavour == 'openrc':
        steps.append(InstallStep('write', at + '/etc/init.d/bustd', OPENRC_SCRIPT, 0o755))
        steps += _options_step(at + '/etc/conf.d/bustd', OPENRC_CONF, args, quote=True)
        if live:
            steps += [InstallStep('run', argv=['rc-update', 'add', 'bustd', 'default']),
                      InstallStep('run', argv=['rc-service', 'bustd', 'restart']),
                      InstallStep('say', text='see it work: tail -f /var/log/bustd.log')]
        else:
            steps.append(InstallStep('link', at + '/etc/runlevels/default/bustd',
                                     '/etc/init.d/bustd'))
    elif flavour == 'runit':
        steps.append(InstallStep('write', at + '/etc/sv/bustd/run', RUNIT_RUN, 0o755))
        steps += _options_step(at + '/etc/sv/bustd/conf', RUNIT_CONF, args)
        service_dir = next((d for d in RUNIT_SERVICE_DIRS if os.path.isdir(at + d)), None)
        if service_dir is None:
            steps.append(InstallStep('say', text='no runit service directory (%s): link '
                                     '/etc/sv/bustd into yours to supervise bustd'
                                     % ', '.join(RUNIT_SERVICE_DIRS)))
            steps += _start_now_steps(live, args)
        else:
            link = at + service_dir + '/bustd'
            if live and os.path.islink(link):
                steps.append(InstallStep('run', argv=['sv', 'restart', '/etc/sv/bustd']))
            else:
                steps.append(InstallStep('link', link, '/etc/sv/bustd'))
                if live:
                    steps.append(InstallStep('say', text='runsvdir starts it within 5 s: '
                                             'sv status bustd'))
    else:
        line = ' '.join([INSTALL_BIN, '--no-daemon', '--log-file', DEFAULT_LOG_FILE]
                        + [sh_quote(a) for a in args])
        if flavour == 'busybox':
            steps.append(InstallStep('say', text='to start it at boot, add this line to '
                                     '/etc/inittab:\n  ::respawn:' + line))
        else:
            steps.append(InstallStep('say', text='to start it at boot, run this from your boot '
                                     'scripts (e.g. /etc/rc.local):\n  ' + ' '.join(
                                         [INSTALL_BIN, '--pidfile', INSTALL_PIDFILE]
                                         + [sh_quote(a) for a in args])))
        steps += _start_now_steps(live, args)
    if not live:
        steps.append(InstallStep('say', text='not starting anything: --root %s is not this '
                                 'machine' % root))
    return steps


def _start_now_steps(live, args):
    """Stop the bustd of our pidfile (an upgrade) and start the new one daemonized."""
    if not live:
        return []
    return [InstallStep('stop', INSTALL_PIDFILE),
            InstallStep('run', argv=[INSTALL_BIN, '--pidfile', INSTALL_PIDFILE] + list(args))]


def uninstall_plan(flavour, root):
    """Return the InstallSteps of --uninstall: stop bustd, remove what --install wrote."""
    at = root.rstrip('/')
    live = at == ''
    steps = []
    if flavour == 'systemd':
        if live:
            steps.append(InstallStep('run', argv=['systemctl', 'disable', '--now', 'bustd']))
        steps.append(InstallStep('remove', at + '/etc/systemd/system/multi-user.target.wants/'
                                 'bustd.service'))
        steps += _remove_generated(at + '/etc/systemd/system/bustd.service', SYSTEMD_UNIT)
        steps += _remove_options(at + '/etc/default/bustd', OPTIONS_FILE)
        if live:
            steps.append(InstallStep('run', argv=['systemctl', 'daemon-reload']))
        if os.path.isdir(at + '/etc/systemd/system/bustd.service.d'):
            steps.append(InstallStep('say', text='left %s/etc/systemd/system/bustd.service.d '
                                     '(yours, not written by --install)' % at))
    elif flavour == 'openrc':
        if live:
            steps += [InstallStep('run', argv=['rc-service', 'bustd', 'stop']),
                      InstallStep('run', argv=['rc-update', 'del', 'bustd', 'default'])]
        steps.append(InstallStep('remove', at + '/etc/runlevels/default/bustd'))
        steps += _remove_generated(at + '/etc/init.d/bustd', OPENRC_SCRIPT)
        steps += _remove_options(at + '/etc/conf.d/bustd', OPENRC_CONF)
    elif flavour == 'runit':
        for d in RUNIT_SERVICE_DIRS:
            link = at + d + '/bustd'
            if os.path.islink(link) and os.readlink(link).rstrip('/') == '/etc/sv/bustd':
                if live:
                    steps.append(InstallStep('run', argv=['sv', 'down', '/etc/sv/bustd']))
                steps.append(InstallStep('remove', link))
        steps += _remove_generated(at + '/etc/sv/bustd/run', RUNIT_RUN)
        steps += _remove_options(at + '/etc/sv/bustd/conf', RUNIT_CONF)
        steps.append(InstallStep('rmdir', at + '/etc/sv/bustd/supervise'))
        steps.append(InstallStep('rmdir', at + '/etc/sv/bustd'))
    if flavour in ('runit', 'busybox', 'none') and live:
        steps.append(InstallStep('stop', INSTALL_PIDFILE))
    if flavour == 'busybox':
        steps.append(InstallStep('say', text='remove the ::respawn:%s line from /etc/inittab '
                                 'yourself, if you added it' % INSTALL_BIN))
    steps += _remove_program(at + INSTALL_BIN)
    if flavour != 'systemd' and os.path.exists(at + DEFAULT_LOG_FILE):
        steps.append(InstallStep('say', text='left %s%s (bustd\'s log)' % (at, DEFAULT_LOG_FILE)))
    return steps


def _remove_generated(path, text):
    """Remove a file --install wrote; keep (and say so) one that was edited since."""
    current = _read_text(path)
    if current is None or current == text:
        return [InstallStep('remove', path)]
    return [InstallStep('say', text='left %s: it differs from what --install writes '
                        '(edited?); remove it yourself' % path)]


def _remove_program(path):
    """Remove the installed copy of bustd.py; keep (and say so) any other program there."""
    head = read_file(path, 4096)
    if head is None or INSTALLED_MARK in head:
        return [InstallStep('remove', path)]
    return [InstallStep('say', text='left %s: it is not a bustd.py that --install wrote (another '
                        'bustd?); remove it yourself' % path)]


def _remove_options(path, template):
    """Remove an options file unless it was edited beyond its BUSTD_ARGS line."""
    current = _read_text(path)
    if current is None:
        return []
    words = options_in(current)
    if words is not None and current == options_text(template, words):
        return [InstallStep('say', text='options were: BUSTD_ARGS="%s"' % words),
                InstallStep('remove', path)]
    return [InstallStep('say', text='left %s: edited beyond its BUSTD_ARGS line; remove it '
                        'yourself' % path)]


def run_install_steps(steps, dry_run, out, proc='/proc', run=None, root='/'):
    """Carry out (or with dry_run only print) the steps; return the exit status.

    Each step prints one line before it acts.  The first failure stops
    the run with exit status 1, and so does a path of the tree at `root`
    whose directory resolves outside it.  Output that fails (`| head -1`)
    does not stop an install half-done (the old daemon stopped, the new one
    never started): the steps go on, a failure goes to stderr, and the
    OutputFailed is raised at the end.
    """
    lost = []     # the OutputFailed that ended the output, if it did

    def failed():
        if lost:      # the install failed too: that sets the exit status
            lost[0].status = EXIT_ENV
            raise lost[0]
        return EXIT_ENV

    def say(text):
        if lost:
            if text.startswith(PROG + ': '):   # a failure: still said, on stderr
                _stderr(text[len(PROG) + 2:])
            return
        try:
            out.write(text + '\n')
            out.flush()
        except OutputFailed as exc:
            if dry_run:      # nothing done: nothing to finish
                raise
            lost.append(exc)
    prefix = 'would ' if dry_run else ''
    for step in steps:
        if step.kind == 'say':
            say(step.text)
            continue
        escape = step.path and root_escape(step.path, root)
        if escape:
            say('%s: --root %s: %s resolves to %s, outside the tree (a symlink in it); '
                'not touching it: fix the link or give --root a tree without it' % (
                    PROG, root, os.path.dirname(step.path), escape))
            return failed()
        if step.kind == 'write':
            say('%swrite %s (mode %o)' % (prefix, step.path, step.mode))
        elif step.kind == 'link':
            say('%slink %s -> %s' % (prefix, step.path, step.data))
        elif step.kind in ('remove', 'rmdir'):
            if not os.path.lexists(step.path):
                continue
            others = step.kind == 'rmdir' and not dry_run and foreign_entries(step.path)
            if others:
                say('left %s: it holds %s, not written by --install; remove it yourself'
                    % (step.path, ', '.join(others)))
                continue
            say('%sremove %s' % (prefix, step.path))
        elif step.kind == 'run':
            say('%srun: %s' % (prefix, ' '.join(sh_quote(a) for a in step.argv)))
        elif step.kind == 'stop':
            say('%sstop the bustd named by %s, if one runs' % (prefix, step.path))
        if dry_run:
            continue
        try:
            _do_install_step(step, proc, run or _run_command)
        except (OSError, EnvironmentProblem) as exc:
            say('%s: failed: %s' % (PROG, getattr(exc, 'strerror', None) or exc))
            return failed()
    if lost:
        raise lost[0]
    return EXIT_OK


def root_escape(path, root):
    """Return where path's directory really is when that is outside root, else None.

    An image's absolute symlink (etc/systemd -> /etc/systemd) means its own
    /etc inside the image, but here it is the host's: --install would write
    (and --uninstall remove) files of the machine it runs on.
    """
    real_root = os.path.realpath(root)
    parent = os.path.realpath(os.path.dirname(path))
    if real_root == '/' or parent == real_root or parent.startswith(real_root + '/'):
        return None
    return parent


def foreign_entries(path):
    """Return the names in directory path that stop its removal (runsv's supervise/ does not)."""
    if path.endswith('/supervise') or os.path.islink(path):
        return []
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _do_install_step(step, proc, run):
    if step.kind == 'write':
        write_atomically(step.path, step.data, step.mode)
    elif step.kind == 'link':
        os.makedirs(os.path.dirname(step.path), exist_ok=True)
        tmp = '%s.%d.tmp' % (step.path, os.getpid())
        try:
            os.symlink(step.data, tmp)
        except FileExistsError:      # a leftover of an interrupted run
            os.unlink(tmp)
            os.symlink(step.data, tmp)
        os.rename(tmp, step.path)
    elif step.kind == 'remove':
        os.unlink(step.path)
    elif step.kind == 'rmdir':
        if os.path.isdir(step.path) and not os.path.islink(step.path):
            import shutil
            # runsv's supervise/ state is emptied too; any other directory must be empty.
            remove = shutil.rmtree if step.path.endswith('/supervise') else os.rmdir
            remove(step.path)
    elif step.kind == 'run':
        status = run(step.argv)
        if status != 0:
            raise EnvironmentProblem('%s exited with status %s' % (step.argv[0], status))
    elif step.kind == 'stop':
        stop_pidfile_bustd(step.path, proc)


def _run_command(argv):
    """Run argv with our stdout/stderr; return its exit status (127: not found)."""
    import subprocess
    try:
        return subprocess.call(argv)
    except OSError:
        return 127


def write_atomically(path, data, mode):
    """Write data (str or bytes) to path through a temporary file renamed over it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = '%s.%d.tmp' % (path, os.getpid())
    fd = open_new_file(tmp, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data if isinstance(data, bytes) else data.encode('utf-8'))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


def stop_pidfile_bustd(path, proc='/proc', timeout_s=KILL_WAIT_S):
    """SIGTERM the bustd a pidfile names (nothing if none runs); wait until it has exited."""
    pid = read_int(path)
    if pid is None or not 0 < pid <= PID_MAX_LIMIT or pid == os.getpid():
        return False
    if not started_with_pidfile(read_file('%s/%d/cmdline' % (proc, pid), 1 << 16) or b'', path):
        return False      # a stale pidfile naming some other process now
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return False
    deadline = time.monotonic() + timeout_s
    while os.path.exists('%s/%d' % (proc, pid)) and time.monotonic() < deadline:
        time.sleep(KILL_POLL_S * 5)
    return True


def started_with_pidfile(cmdline, path):
    """Return True if a NUL-separated command line has `--pidfile path` (a bustd that wrote it).

    A word "bustd" anywhere is not enough: `tail -f /var/log/bustd.log`, or
    the admin's `sudo python3 bustd.py --install` itself, may have been given
    the pid of a bustd that died without removing its pidfile.
    """
    words = cmdline.split(b'\0')
    want = os.fsencode(path)
    return any(w == b'--pidfile=' + want or (w == b'--pidfile' and words[i + 1:i + 2] == [want])
               for i, w in enumerate(words))


def install_main(settings, out=None, euid=None):
    """--install / --uninstall / --print-unit; return the exit status."""
    out = sys.stdout if out is None else out
    if settings.print_unit:
        out.write(SYSTEMD_UNIT)
        out.flush()
        return EXIT_OK
    euid = os.geteuid() if euid is None else euid
    root = settings.install_root
    if euid != 0 and os.path.abspath(root) == '/' and not settings.dry_run:
        _stderr('--%s needs root: run it with sudo (or add --dry-run to see what it would '
                'do)' % settings.install)
        return EXIT_ENV
    flavour = settings.init_system
    if flavour == 'auto':
        flavour = detect_init(root)
        if root == '/' and running_init(root) is None:
            out.write('%s: no running init system found; chose %s from the files installed '
                      '(give --init to choose)\n' % (PROG, flavour))
    if settings.install == 'install':
        program = read_file(os.path.realpath(__file__), 16 << 20)
        if program is None:
            _stderr('--install: cannot read %s, the file to install' % __file__)
            return EXIT_ENV
        steps = install_plan(flavour, root, settings.install_args, program)
    else:
        steps = uninstall_plan(flavour, root)
    out.write('%s: %s%s for %s %s %s\n' % (
        PROG, settings.install, ' (dry run)' if settings.dry_run else '', flavour,
        'into' if settings.install == 'install' else 'from', root))
    out.flush()    # a failed write is OutputFailed here, not an error at exit
    return run_install_steps(steps, settings.dry_run, out, root=root)


# ============================================================================
# main
# ============================================================================

def build_sensor(settings, calls, log):
    """Return the sensor for the settings (machine or cgroup); UsageError for a bad --cgroup."""
    machine = MachineSensor(settings.proc, calls, log, settings.sys_fs)
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


def build_daemon(settings, calls, log, sensor=None, policy=None, environ=None, flags=None,
                 clock=time.monotonic, sleep=None, fill=None):
    """Return a Daemon wired as settings say: its sensor, policy, helpers, notifier,
    service manager, metrics and Waiter.  The one place a Daemon is put together.

    sensor: a checked one (its warnings logged by the caller), else built from
    settings, checked and its warnings logged; policy: else one that may signal
    every uid.  flags: the Flags the early signal handlers set (catch_signals),
    which become the daemon's, for this process.  sleep replaces the Waiter
    (tests): sleeps then end on nothing, and idle sleeps are plain sleeps.
    """
    environ = os.environ if environ is None else environ
    if sensor is None:
        sensor = build_sensor(settings, calls, log)
        for warning in sensor.check():
            log.warning(warning)
    if policy is None:
        policy = Policy(settings, None, log)
    helpers = Helpers(log)
    notifier = Notifier(settings, helpers, log, user_name_function(), environ)
    waiter = Waiter() if sleep is None else None
    daemon = Daemon(settings, sensor, policy, calls, log, notifier, helpers,
                    ServiceManager(environ), clock=clock, sleep=sleep or waiter, fill=fill,
                    far_sleep=waiter)
    daemon.waiter = waiter
    if flags is not None:   # signals that came during start-up are acted on
        flags.pid = os.getpid()   # the daemon's own: daemonize forked since
        daemon.flags = flags
    if settings.metrics_file:
        daemon.metrics = Metrics(settings.metrics_file, sensor.kind)
    return daemon


def choose_log_sink(settings):
    """Return the sink: --log-file, --syslog, stderr (foreground), else syslog or the default file."""
    if settings.log_file:
        return FileSink(settings.log_file)
    if settings.syslog or (settings.daemon and _is_socket('/dev/log')):
        return SyslogSink('/dev/log')
    if settings.daemon:
        return FileSink(DEFAULT_LOG_FILE)
    return StderrSink()


def choose_fallback_sink(settings, sink, environ):
    """Return where lines go when the sink fails: stderr in the foreground, else syslog
    or the kernel log."""
    if not settings.daemon:
        return None if isinstance(sink, StderrSink) else StderrSink(environ=environ)
    if not isinstance(sink, SyslogSink) and _is_socket('/dev/log'):
        return SyslogSink('/dev/log')
    return KmsgSink()


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
    if th.thrash_stall_ms is not None:
        lines.append('thrashing rule: SIGTERM after %d ms of memory stall (PSI full) within '
                     '%g s, counted while memory demand would exhaust RAM and swap within '
                     '%g s; zram swaps: %s' % (
                         th.thrash_stall_ms, THRASH_WINDOW_S, th.thrash_horizon_s,
                         ' '.join(os.path.dirname(p) for p in sensor.zram_paths) or 'none'))
    else:
        lines.append('thrashing rule: off (%s)' % ('--thrash off' if sensor.has_psi
                                                   else 'no PSI here'))
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
    if s.kill_cgroup:
        victims += ', whole leaf cgroup (--kill-cgroup)'
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
    if s.metrics_file:
        lines.append('metrics: %s (Prometheus text format), at least every %g s'
                     % (s.metrics_file, METRICS_EVERY_S))
    if s.dry_run:
        lines.append('DRY RUN: no signal will be sent')
    if in_initial_pid_namespace() is False:
        init = parse_stat(read_small(identity_root(s.proc) + '/1/stat') or b'')
        lines.append('PID 1 of this PID namespace (%s) is never killed: the kernel drops '
                     'signals sent to it from inside; run the app under an init (docker run '
                     '--init), not as PID 1' % (printable(init.name) if init else 'unknown'))
    return lines


def _yes(value):
    return 'yes' if value else 'no'


def _stderr(message):
    # Bytes that were not UTF-8 on the command line show as \xff, not as '?'.
    line = ('%s: %s\n' % (PROG, message)).encode('utf-8', 'surrogateescape').decode(
        'utf-8', 'backslashreplace')
    try:
        os.write(2, line.encode('utf-8', 'replace'))
    except OSError:
        pass


def main(argv=None):
    """Run bustd with argv (default sys.argv[1:]) in this interpreter; return the exit status."""
    flags = catch_signals(Flags())
    open_standard_fds()
    settings, status = parse_or_status(sys.argv[1:] if argv is None else argv)
    if settings is None:
        return status
    return dispatch(settings, flags)


def parse_or_status(argv):
    """Return (Settings, None), or (None, exit status) after --help, --version or an error."""
    try:
        return parse_settings(argv), None
    except UsageError as exc:
        _stderr('%s (see %s --help)' % (exc, PROG))
        return None, EXIT_USAGE
    except SystemExit as exc:   # --help, --version: argparse printed to sys.stdout
        try:
            _stdout().flush()
        except OSError as error:
            return None, _stdout_failed(error)
        return None, exc.code or 0
    except OSError as exc:      # from printing --help or --version
        return None, _stdout_failed(exc)


def open_standard_fds():
    """Open /dev/null on each of fds 0-2 that is closed (`bustd >&- 2>&-`).

    Otherwise the log file or the pidfile would be opened as fd 0-2, which
    daemonize points at /dev/null: the daemon logged nothing and lost its lock.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)   # the lowest free fd: this one
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            os.set_inheritable(fd, True)   # kept across relaunch's exec


def _stdout():
    """Return sys.stdout; OSError (EBADF) if fd 1 was closed when Python started."""
    if sys.stdout is None:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))
    return sys.stdout


class OutputFailed(Exception):
    """A write to stdout failed (args[0]: the OSError), as opposed to an install step;
    `status`: the exit status when an install step failed as well."""
    status = None


class CheckedOutput(object):
    """sys.stdout for --install and --print-unit: a failed write raises OutputFailed, so
    that `--install | head -1` or `--print-unit > /dev/full` ends as --list does."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        try:
            self.stream.write(text)
        except OSError as exc:
            raise OutputFailed(exc)

    def flush(self):
        try:
            self.stream.flush()
        except OSError as exc:
            raise OutputFailed(exc)


def _stdout_failed(exc):
    """Return the exit status after sys.stdout failed, leaving nothing to flush at exit."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    return _output_error(exc)


def _output_error(exc):
    """Return the exit status for a failed write to stdout, as standard tools behave."""
    if exc.errno == errno.EPIPE:   # `bustd --list | head`: the reader has all it wants
        return 128 + signal.SIGPIPE
    _stderr('cannot write to stdout: %s' % exc.strerror)
    return EXIT_ENV


def dispatch(settings, flags=None):
    """Install, or list, or run the daemon for parsed settings; return the exit status
    (1: environment, 2: usage)."""
    if settings.install or settings.print_unit:
        try:
            return install_main(settings, CheckedOutput(_stdout()))
        except OutputFailed as failed:
            status = _stdout_failed(failed.args[0])
            return failed.status or status
        except OSError as exc:      # _stdout(): fd 1 was closed
            return _stdout_failed(exc)
    if not sys.platform.startswith('linux'):
        _stderr('bustd runs on Linux only (this is %s)' % sys.platform)
        return EXIT_ENV
    try:
        return run_daemon(settings, flags=flags)
    except UsageError as exc:
        _stderr('%s (see %s --help)' % (exc, PROG))
        return EXIT_USAGE
    except EnvironmentProblem as exc:
        _stderr(str(exc))
        return EXIT_ENV


def run_daemon(settings, environ=None, flags=None):
    """Check the machine, then print the list (--list) or daemonize, build the daemon
    and serve; return the exit status.

    flags: the Flags the early signal handlers set (catch_signals), if any.
    """
    environ = os.environ if environ is None else environ
    calls = load_kernel_calls()
    log = Log(StderrSink(environ=environ), settings.verbose)
    sensor = build_sensor(settings, calls, log)
    warnings = sensor.check()
    if not sensor.has_psi:
        settings.psi_avg10 = None   # the rule is off: it must not widen the exact-read band
        settings.thrash_stall_ms = None
    first = sensor.read_exact(Reading())
    if not first.exact or first.mem_total_kib <= 0:
        raise EnvironmentProblem('no usable memory reading from %s' % sensor.describe())
    check_levels(settings, compute_thresholds(settings, first.mem_total_kib,
                                              first.swap_total_kib))
    caps = capabilities()
    only_uid = None if has_cap(caps, CAP_KILL) else os.geteuid()
    policy = Policy(settings, only_uid, log)
    if settings.list:
        return print_list(settings, policy, sensor, flags)
    try:
        sink = choose_log_sink(settings)
    except OSError as exc:
        raise EnvironmentProblem('cannot open the log file %s (%s); give --log-file the path '
                                 'of a writable regular file, or --syslog'
                                 % (exc.filename, exc.strerror))
    # Locked before daemonizing: a second bustd is refused here, on the terminal.
    pidfile = Pidfile(settings.pidfile) if settings.pidfile else None
    report_fd = None
    if settings.daemon:
        result = daemonize()
        if isinstance(result, str):   # the original process
            if not result:
                _stderr('the daemon exited during start-up; see %s' % sink.describe())
                return EXIT_ENV
            try:
                write_all(1, ('%s: running as pid %s, logging to %s\n' % (
                    PROG, result, sink.describe())).encode('utf-8', 'replace'))
            except OSError:
                pass   # the daemon runs: that is what the status says
            return EXIT_OK
        report_fd = result
    log.sink = sink
    log.fallback = choose_fallback_sink(settings, sink, environ)
    try:
        if pidfile is not None:
            pidfile.write(os.getpid())
        for warning in warnings + startup_warnings(calls, policy):
            log.warning(warning)
        oom_adj = protect_self('/proc', log)
        daemon = build_daemon(settings, calls, log, sensor, policy, environ, flags)
        return serve(daemon, caps, oom_adj, report_fd)
    except Stopping as stop:     # before the loop ran: no kills yet
        log.info(stop_line(stop.args[0], 0))
        return EXIT_OK
    except (EnvironmentProblem, OSError) as exc:
        log.error('cannot run: %s' % exc)   # stderr may be /dev/null by now
        return EXIT_ENV
    finally:
        if pidfile is not None:
            pidfile.remove()


def print_list(settings, policy, sensor, flags=None):
    """--list: print the candidates; return the exit status (130 on SIGINT, as a shell's)."""
    if flags is not None and flags.stop:
        return 128 + flags.stop
    # A one-shot command stops on Ctrl-C: the flag handler would wait for a loop.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        processes = scan_processes(settings.proc, policy, sensor.member_pids())
        table = format_table(processes, settings.sort_by_rss, user_name_function()) + '\n'
        out = getattr(_stdout(), 'buffer', None)   # bytes: names need not be ASCII
        if out is None:
            sys.stdout.write(table)
        else:
            out.write(table.encode('utf-8', 'replace'))
        sys.stdout.flush()
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except OSError as exc:
        return _stdout_failed(exc)
    finally:
        signal.signal(signal.SIGINT, previous)   # a late Ctrl-C: no traceback
    return EXIT_OK


def startup_warnings(calls, policy):
    """Return the warnings about what this bustd cannot do: missing calls, no CAP_KILL."""
    warnings = []
    if calls.missing:
        warnings.append('running without ' + '; '.join(calls.missing))
    if policy.only_uid is not None:
        warnings.append('no CAP_KILL (not root?): only processes of uid %d can be killed'
                        % policy.only_uid)
    return warnings


def serve(daemon, caps, oom_adj, report_fd=None):
    """Start the daemon built by build_daemon: wake-ups, memory locked, READY=1, then
    the loop; return the exit status.

    oom_adj: whether bustd's oom_score_adj is -1000 (protect_self); report_fd:
    where a daemonized bustd reports its pid to the original process.
    """
    settings, sensor, policy, calls, log = (daemon.settings, daemon.sensor, daemon.policy,
                                            daemon.calls, daemon.log)
    features = {'oom_adj': oom_adj}
    waiter = daemon.waiter
    waiter.add(install_signal_handlers(daemon.flags), waiter.select.POLLIN, 'signal')
    waiter.watch_signals_far((signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1))
    daemon.start()
    wakeups = []
    psi_fd, psi_how = open_psi_trigger(sensor.psi_path if sensor.has_psi else None)
    if psi_fd is not None:
        waiter.add(psi_fd, waiter.select.POLLPRI, 'psi', drain=False)
        wakeups.append('PSI trigger "%s"' % psi_how)
    else:
        wakeups.append('PSI trigger off (%s)' % psi_how)
    if waiter.threshold_fd is not None:   # registered by daemon.start()
        wakeups.append('cgroup usage threshold event')
    features['wakeups'] = ', '.join(wakeups)
    # Touch every page the kill path needs before locking (ONFAULT locks only those).
    # SIGTERM ends this scan at once (Stopping); later on it waits for the loop.
    daemon.flags.interruptible = True
    victim, skipped = find_victim(settings.proc, policy, sensor.member_pids())
    daemon.flags.interruptible = False
    if victim is not None:
        describe_victim(victim, skipped, settings.sort_by_rss)
        kill_line(signal.SIGTERM, victim, daemon.trigger())
    del victim, skipped
    # Calibrate while memory may still be returned: after mlockall it could not.
    daemon.fill = FillModel(calibrate_apart(stop=lambda: daemon.flags.stop,
                                            warn=log.warning, leftover=daemon.unreaped.append),
                            available_cpus())
    features['fill'] = daemon.fill.describe()
    release_startup_memory(calls)
    features['mlock'] = lock_memory(calls, caps, log)
    for line in startup_lines(settings, sensor, daemon.th, calls, features):
        log.info(line)
    if daemon.metrics is not None:
        daemon.write_metrics(daemon.clock())
    log.info('ready: watching (SIGUSR1 logs a status, SIGTERM stops)')
    daemon.service.notify('READY=1\nSTATUS=watching: %s\nMAINPID=%d' % (
        describe_levels(daemon.th), os.getpid()))
    if report_fd is not None:
        os.write(report_fd, str(os.getpid()).encode())
        os.close(report_fd)
    return daemon.run()


# As a program, bustd.py parses its command line, then replaces itself (same
# pid) with a fresh `python3 -I -S` that receives the compiled code and the
# settings through a memfd.  The daemon thus never holds argparse, nor the
# ~5 MiB syntax tree CPython keeps for a running script, nor the compiler's
# leftovers: 3-4 MiB less RSS.  (Compiling this file inside the new
# interpreter instead was measured: 2.2 MiB more RSS, after malloc_trim.)
# -I -S also keep PYTHON* variables, user site-packages and .pth hooks out of
# a root daemon.
LOADER = ("import marshal, os, sys; f = os.fdopen(int(sys.argv[1]), 'rb'); "
          "code, settings = marshal.load(f); f.close(); "
          "g = {'__name__': '__bustd__', '__file__': sys.argv[2]}; exec(code, g); "
          "sys.exit(g['isolated_main'](settings))")


def isolated_main(plain_settings):
    """The relaunched daemon's entry point (LOADER calls it): run plain settings."""
    flags = catch_signals(Flags())
    return dispatch(Settings.from_dict(plain_settings), flags)


def relaunch(settings, code, argv, flags):
    """exec the isolated daemon interpreter; return why not if that cannot be done here."""
    memfd_create = _memfd_create_function()
    if not sys.executable:
        return 'no sys.executable'
    if code is None:
        return 'no code object of this module'
    if memfd_create is None:
        return 'no memfd_create'
    import marshal
    try:
        data = marshal.dumps((code, settings.to_dict()))
    except ValueError as exc:   # a setting of a type marshal cannot carry: a bug
        return 'settings cannot be marshalled (%s)' % exc
    fd = None
    try:
        fd = memfd_create('bustd-code')
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
        os.set_inheritable(fd, True)
        # Signals that come until the new interpreter has its handlers stay
        # pending (isolated_main unblocks them); any already caught are re-sent.
        signal.pthread_sigmask(signal.SIG_BLOCK, EARLY_SIGNALS + (signal.SIGTERM,))
        for signum, caught in ((flags.stop, flags.stop), (signal.SIGHUP, flags.hup),
                               (signal.SIGUSR1, flags.usr1)):
            if caught:
                os.kill(os.getpid(), signum)
        # argv is passed on unused, so that ps and pgrep show the real command.
        os.execv(sys.executable, [sys.executable, '-I', '-S', '-c', LOADER, str(fd),
                                  os.path.abspath(__file__)] + argv)
    except OSError as exc:
        catch_signals(flags)   # whatever was re-sent lands in flags again
        if fd is not None:
            os.close(fd)
        return exc.strerror


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
    flags = catch_signals(Flags())
    open_standard_fds()
    settings, status = parse_or_status(argv)
    if settings is None:
        return status
    if not (settings.list or settings.install or settings.print_unit):
        why = relaunch(settings, code, argv, flags)
        _stderr('warning: cannot relaunch in an isolated interpreter (%s): running in this '
                'one, with about 4 MiB more memory' % why)
    return dispatch(settings, flags)


if __name__ == '__main__':
    # The code object of this very module, to hand over without recompiling.
    sys.exit(launch(sys.argv[1:], getattr(sys, '_getframe', lambda: None)().f_code
                    if hasattr(sys, '_getframe') else None))
