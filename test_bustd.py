#!/usr/bin/env python3
"""Tests for bustd.py: python3 -m unittest -v

Fake /proc trees are built in temporary directories.  Tests that kill only
ever signal processes they started themselves (oom_score_adj 1000, their own
session or cgroup); tests that need real memory pressure do it inside a
memory cgroup of their own, with a small limit.
"""
import errno
import io
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
BUSTD = os.path.join(HERE, 'bustd.py')
sys.path.insert(0, HERE)
import bustd  # noqa: E402

GIB = 1024 * 1024   # KiB
MIB = 1024


# ----------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------

class ListSink(object):
    """A log sink that keeps (priority, message) pairs."""

    def __init__(self):
        self.lines = []

    def write(self, priority, message):
        self.lines.append((priority, message))
        return True

    def reopen(self):
        self.lines.append((6, 'reopened'))

    def describe(self):
        return 'a list'

    def text(self):
        return '\n'.join(m for _, m in self.lines)


def make_log(verbose=False):
    sink = ListSink()
    return bustd.Log(sink, verbose), sink


def stat_line(pid, name, state='S', ppid=100, pgrp=None, session=None, flags=0,
              starttime=5000, rss_pages=256):
    """Return /proc/PID/stat bytes in the kernel's layout (52 fields)."""
    fields = [state, ppid, pgrp if pgrp is not None else pid,
              session if session is not None else pid, 0, -1, flags,
              0, 0, 0, 0, 1, 1, 0, 0, 20, 0, 1, 0, starttime, 10 << 20, rss_pages]
    fields += [0] * (52 - 2 - len(fields))
    return ('%d (%s) ' % (pid, name) + ' '.join(str(f) for f in fields) + '\n').encode()


class FakeProc(object):
    """A fake /proc tree: meminfo, PSI, zoneinfo and processes."""

    def __init__(self, root):
        self.root = root
        os.makedirs(os.path.join(root, 'pressure'), exist_ok=True)
        self.meminfo(total_kib=8 * GIB, avail_kib=6 * GIB)
        self.psi(0.0)

    def write(self, rel, data, mode='wb'):
        path = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # Write then rename: a reader never sees a half-written file.
        tmp = path + '.tmp'
        with open(tmp, mode) as f:
            f.write(data)
        os.rename(tmp, path)

    def meminfo(self, total_kib, avail_kib, swap_total_kib=0, swap_free_kib=0,
                with_available=True, free_kib=None, cached_kib=0, buffers_kib=0, shmem_kib=0,
                anon_kib=None):
        free = avail_kib if free_kib is None else free_kib
        lines = ['MemTotal:       %d kB' % total_kib, 'MemFree:        %d kB' % free]
        if with_available:
            lines.append('MemAvailable:   %d kB' % avail_kib)
        if anon_kib is not None:
            lines.append('AnonPages:      %d kB' % anon_kib)
        lines += ['Buffers:        %d kB' % buffers_kib, 'Cached:         %d kB' % cached_kib,
                  'SwapCached:            0 kB', 'Shmem:          %d kB' % shmem_kib,
                  'SwapTotal:      %d kB' % swap_total_kib,
                  'SwapFree:       %d kB' % swap_free_kib, 'HugePages_Total:       0']
        self.write('meminfo', ('\n'.join(lines) + '\n').encode())

    def psi(self, some_avg10, full_avg10=0.0, full_total_us=1):
        self.write('pressure/memory', (
            'some avg10=%.2f avg60=0.00 avg300=0.00 total=%d\n'
            'full avg10=%.2f avg60=0.00 avg300=0.00 total=%d\n'
            % (some_avg10, full_total_us, full_avg10, full_total_us)).encode())

    def add(self, pid, name='worker', oom_score=100, adj=0, uid=None, cmdline=None, **stat):
        d = os.path.join(self.root, str(pid))
        os.makedirs(d, exist_ok=True)
        self.write('%d/stat' % pid, stat_line(pid, name, **stat))
        self.write('%d/oom_score' % pid, ('%d\n' % oom_score).encode())
        self.write('%d/oom_score_adj' % pid, ('%d\n' % adj).encode())
        self.write('%d/cmdline' % pid, (cmdline if cmdline is not None
                                        else name.encode() + b'\0'))
        if uid is not None:
            os.chown(d, uid, uid)

    def remove(self, pid):
        shutil.rmtree(os.path.join(self.root, str(pid)))

    def link(self, pid):
        """Make pid's entry the real /proc/PID (a process the test started)."""
        os.symlink('/proc/%d' % pid, os.path.join(self.root, str(pid)))


class TempDirTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix='bustd-test-')
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.proc = FakeProc(os.path.join(self.tmp, 'proc'))


def settings(proc, **overrides):
    overrides.setdefault('daemon', False)
    return bustd.Settings(proc=proc.root if isinstance(proc, FakeProc) else proc, **overrides)


def no_kernel_calls():
    calls = bustd.KernelCalls()
    return calls


VICTIM_CODE = textwrap.dedent('''
    import os, signal, sys, time
    with open('/proc/self/oom_score_adj', 'w') as f:
        f.write('1000')
    if 'ignore-term' in sys.argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.stdout.write('ready\\n')
    sys.stdout.flush()
    while True:
        time.sleep(1)
''')


def start_victim(*args, **popen):
    """Start a test-owned sleeper with oom_score_adj 1000; return its Popen once ready."""
    child = subprocess.Popen([sys.executable, '-c', VICTIM_CODE] + list(args),
                             stdout=subprocess.PIPE, **popen)
    assert child.stdout.readline() == b'ready\n'
    return child


def stop(child):
    """Cleanup: SIGKILL a test-owned child if it still runs, and reap it."""
    if child.poll() is None:
        child.kill()
    child.wait()
    if child.stdout is not None:
        child.stdout.close()


def calls_refusing_signals(test):
    """Real KernelCalls whose pidfd_send_signal answers EPERM, as an LSM might."""
    calls = bustd.load_kernel_calls()
    if calls.pidfd_send_signal is None:
        test.skipTest('no pidfds here')

    def refused(fd, sig):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))
    calls.pidfd_send_signal = refused
    return calls


def make_process(pid, name='w', state='S', ppid=100, pgrp=None, session=None, flags=0,
                 starttime=5000, rss_kib=1024, uid=0, oom_score=100, adj=0):
    """Return a bustd.Process built whole, as the scan would."""
    stat = bustd.ProcStat(pid=pid, name=name, state=state, ppid=ppid,
                          pgrp=pid if pgrp is None else pgrp,
                          session=pid if session is None else session, flags=flags,
                          starttime=starttime, rss_pages=rss_kib // 4)
    return bustd.Process(stat, rss_kib, uid, oom_score, adj)


def reap(child, timeout=10):
    """Kill (if needed) and wait for a test-owned child; return its returncode."""
    try:
        return child.wait(timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        return child.wait()


# ----------------------------------------------------------------------------
# Pure parsers
# ----------------------------------------------------------------------------

class ParseStatTest(unittest.TestCase):
    def test_hostile_names(self):
        cases = [
            ('bash', 'bash'),
            ('a b', 'a b'),
            ('x) R 1 (y', 'x) R 1 (y'),
            ('))((', '))(('),
            ('new\nline', 'new\nline'),
            ('', ''),
        ]
        for name, expected in cases:
            with self.subTest(name=name):
                st = bustd.parse_stat(stat_line(42, name, state='R', ppid=7, pgrp=9,
                                                session=11, flags=bustd.PF_EXITING,
                                                starttime=123456, rss_pages=99))
                self.assertEqual(st.name, expected)
                self.assertEqual((st.pid, st.state, st.ppid, st.pgrp, st.session),
                                 (42, 'R', 7, 9, 11))
                self.assertEqual((st.flags, st.starttime, st.rss_pages),
                                 (bustd.PF_EXITING, 123456, 99))

    def test_malformed(self):
        for data in (b'', b'garbage', b'12 (x', b'12 (x) S 1 2', b'x (y) S ' + b'1 ' * 30):
            with self.subTest(data=data):
                self.assertIsNone(bustd.parse_stat(data))

    def test_a_number_longer_than_any_kernel_prints_is_malformed(self):
        # 20 characters is the longest (a signed 64-bit minimum); 320 digits of RSS
        # overflowed the float its size is printed with: a traceback at start-up.
        self.assertIsNotNone(bustd.parse_stat(stat_line(42, 'w', rss_pages=10 ** 19)))
        self.assertIsNone(bustd.parse_stat(stat_line(42, 'w', rss_pages=10 ** 320)))
        self.assertIsNone(bustd.parse_stat(stat_line(42, 'w', starttime=10 ** 40)))
        self.assertIsNone(bustd.parse_stat(stat_line(10 ** 30, 'w')))

    def test_real_stat_of_this_process(self):
        with open('/proc/self/stat', 'rb') as f:
            st = bustd.parse_stat(f.read())
        self.assertEqual(st.pid, os.getpid())
        self.assertEqual(st.ppid, os.getppid())
        self.assertEqual(st.pgrp, os.getpgrp())


class ParseMeminfoTest(unittest.TestCase):
    def test_fields_in_kib(self):
        fields = bustd.parse_meminfo(b'MemTotal:  1000 kB\nMemAvailable: 250 kB\n'
                                     b'HugePages_Total:  3\nbad line\n\n')
        self.assertEqual(fields, {'MemTotal': 1000, 'MemAvailable': 250, 'HugePages_Total': 3})

    def test_a_number_too_long_for_any_kernel_is_skipped_not_a_traceback(self):
        # int() of more than 4300 digits is a ValueError (Python 3.11 and later).
        fields = bustd.parse_meminfo(b'MemTotal: ' + b'9' * 5000 + b' kB\nMemFree: 7 kB\n')
        self.assertEqual(fields, {'MemFree': 7})

    def test_memory_stat_format(self):
        fields = bustd.parse_meminfo(b'cache 4096\nactive_file 8192\ntotal_rss 1\n')
        self.assertEqual(fields['active_file'], 8192)
        self.assertEqual(fields['total_rss'], 1)

    def test_available_estimate_on_old_kernels(self):
        cases = [
            ({'MemAvailable': 5, 'MemFree': 100}, 5),
            ({'MemFree': 100, 'Cached': 50, 'Buffers': 10, 'Shmem': 20}, 140),
            ({'MemFree': 10, 'Shmem': 50}, 0),
        ]
        for fields, expected in cases:
            with self.subTest(fields=fields):
                self.assertEqual(bustd.available_kib(fields), expected)


class ParsePsiTest(unittest.TestCase):
    def test_cases(self):
        cases = [
            (b'some avg10=1.50 avg60=0.00 avg300=0.00 total=5\n'
             b'full avg10=0.25 avg60=0.00 avg300=0.00 total=2\n', (1.5, 0.25)),
            (b'some avg10=99.99 avg60=1 avg300=1 total=1\n', (99.99, None)),
            (b'', (None, None)),
            (b'some avg10=abc\n', (None, None)),
            (b'garbage\x00\xff\n', (None, None)),
        ]
        for data, expected in cases:
            with self.subTest(data=data):
                self.assertEqual(bustd.parse_psi(data), expected)


class ParseSizesTest(unittest.TestCase):
    def test_sizes_kib(self):
        cases = [('1024', 1024), ('512M', 512 * 1024), ('1G', GIB), ('1.5g', GIB * 3 // 2),
                 ('512MiB', 512 * 1024), ('64k', 64), ('2T', 2 * 1024 ** 3), (' 10M ', 10240),
                 ('100MB', 100 * 1024)]
        for text, expected in cases:
            with self.subTest(text=text):
                self.assertEqual(bustd.parse_size_kib(text), expected)

    def test_bad_sizes(self):
        for text in ('', 'M', 'abc', '-5M', '1X', '1.2.3G', 'nan'):
            with self.subTest(text=text):
                with self.assertRaises(ValueError):
                    bustd.parse_size_kib(text)

    def test_percent_pairs(self):
        cases = [('10', (10.0, 5.0)), ('10,5', (10.0, 5.0)), ('20,18', (20.0, 18.0)),
                 ('100', (100.0, 50.0)), ('0', (0.0, 0.0)), ('7%', (7.0, 3.5))]
        for text, expected in cases:
            with self.subTest(text=text):
                self.assertEqual(bustd.parse_pair(text, bustd.parse_percent), expected)

    def test_bad_percent_pairs(self):
        for text in ('120', '-1', 'abc', '5,10', '10,', ',5', '10,5,1'):
            with self.subTest(text=text):
                with self.assertRaises(ValueError):
                    bustd.parse_pair(text, bustd.parse_percent)

    def test_size_pairs(self):
        self.assertEqual(bustd.parse_pair('1G', bustd.parse_size_kib), (GIB, GIB / 2))
        self.assertEqual(bustd.parse_pair('1G,256M', bustd.parse_size_kib), (GIB, 256 * MIB))


class ParseMiscTest(unittest.TestCase):
    def test_zoneinfo_reserve(self):
        zoneinfo = textwrap.dedent('''\
            Node 0, zone      DMA
              pages free     3840
                    min      13
                    low      16
                    high     19
                    managed  3840
                    protection: (0, 2000, 3000, 3000)
              pagesets
                cpu: 0
                          count: 0
                          high:  500
            Node 0, zone    DMA32
              pages free     100
                    high     700
                    managed  500000
                    protection: (0, 0, 1000, 1000)
            Node 0, zone   Normal
                    high     100
                    managed  50
                    protection: (0, 0, 0, 0)
            ''').encode()
        # DMA: 19 + 3000; DMA32: 700 + 1000; Normal: min(100, 50 managed) -> 50
        self.assertEqual(bustd.parse_zoneinfo_reserve_kib(zoneinfo, 4),
                         (3019 + 1700 + 50) * 4)
        self.assertEqual(bustd.parse_zoneinfo_reserve_kib(b''), 0)

    def test_zoneinfo_of_this_machine_is_a_lower_bound_gap(self):
        with open('/proc/zoneinfo', 'rb') as f:
            reserve = bustd.parse_zoneinfo_reserve_kib(f.read())
        with open('/proc/meminfo', 'rb') as f:
            fields = bustd.parse_meminfo(f.read())
        self.assertGreater(reserve, 0)
        # MemAvailable >= MemFree - totalreserve (the kernel's formula).
        self.assertGreaterEqual(fields['MemAvailable'] + 64 * MIB, fields['MemFree'] - reserve)

    def test_glob_match(self):
        cases = [
            ('sshd', 'sshd', True), ('sshd', 'sshd2', False), ('systemd*', 'systemd-journal', True),
            ('systemd-*', 'systemd', False), ('*', '', True), ('a*b*c', 'aXXbYYc', True),
            ('a*b*c', 'aXXbYY', False), ('?ash', 'bash', True), ('?ash', 'ash', False),
            ('[bd]ash', 'dash', True), ('[!bd]ash', 'dash', False), ('[a-c]at', 'bat', True),
            ('[a-c]at', 'rat', False), ('*.py', 'x.py', True), ('x', 'X', False),
            ('**', 'abc', True), ('a[', 'a[', True),
            # sets as the shell and fnmatch read them
            ('[!]', '[!]', True), ('[!]', 'x', False), ('[!]]', 'a', True), ('[!]]', ']', False),
            ('[]]', ']', True), ('[]a]', 'a', True), ('[!]a]', 'b', True), ('[!]a]', 'a', False),
            ('[^a]', '^', True), ('[^a]', 'b', False), ('[a-]', '-', True), ('[-a]', '-', True),
            ('[!-a]', 'b', True), ('[a-c-e]', '-', True), ('[a-c-e]', 'd', False),
            ('[\\]', '\\', True), ('[[]', '[', True), ('[!a', '[!a', True),
        ]
        import fnmatch
        for pattern, text, expected in cases:
            with self.subTest(pattern=pattern, text=text):
                self.assertEqual(bustd.glob_match(pattern, text), expected)
                self.assertEqual(fnmatch.fnmatchcase(text, pattern), expected)

    def test_glob_match_agrees_with_fnmatch(self):
        import fnmatch
        import random
        import warnings
        rng = random.Random(7)
        compared = 0
        for _ in range(30000):
            pattern = ''.join(rng.choice('ab-]![*?^\\z') for _ in range(rng.randint(0, 7)))
            text = ''.join(rng.choice('ab-]![^\\z') for _ in range(rng.randint(0, 4)))
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter('ignore')      # "possible nested set"
                    expected = fnmatch.fnmatchcase(text, pattern)
            except Exception:     # Python < 3.7: fnmatch fails on reversed ranges
                continue
            compared += 1
            if bustd.glob_match(pattern, text) != expected:
                self.fail('glob %r on %r: fnmatch says %s' % (pattern, text, expected))
        self.assertGreater(compared, 25000)

    def test_printable(self):
        self.assertEqual(bustd.printable('a\nb\x1b'), 'a\\x0ab\\x1b')
        self.assertEqual(bustd.printable('x' * 10, 4), 'xxxx...')

    def test_format_kib(self):
        cases = [(0, '0 KiB'), (1023, '1023 KiB'), (1024, '1.0 MiB'), (3 * GIB + GIB // 10, '3.1 GiB')]
        for kib, text in cases:
            self.assertEqual(bustd.format_kib(kib), text)

    def test_cap_eff(self):
        self.assertEqual(bustd.parse_cap_eff('Name:\tx\nCapEff:\t0000000000000020\n'), 1 << 5)
        self.assertEqual(bustd.parse_cap_eff('nothing'), 0)
        self.assertTrue(bustd.has_cap(1 << bustd.CAP_KILL, bustd.CAP_KILL))
        self.assertFalse(bustd.has_cap(1 << bustd.CAP_KILL, bustd.CAP_IPC_LOCK))


# ----------------------------------------------------------------------------
# Policy (when): thresholds, decide, sleep_time
# ----------------------------------------------------------------------------

def reading(total=8 * GIB, avail=6 * GIB, swap_total=0, swap_free=0, psi=None, exact=True):
    r = bustd.Reading()
    r.mem_total_kib, r.mem_available_kib = total, avail
    r.mem_free_kib = avail
    r.swap_total_kib, r.swap_free_kib = swap_total, swap_free
    r.psi_some_avg10 = psi
    r.exact = exact
    return r


class ThresholdsTest(unittest.TestCase):
    def th(self, total=1000 * MIB, swap=0, **kw):
        return bustd.compute_thresholds(bustd.Settings(**kw), total, swap)

    def test_defaults(self):
        th = self.th(swap=2000 * MIB)
        self.assertEqual((th.mem_term_kib, th.mem_kill_kib), (100 * MIB, 50 * MIB))
        self.assertEqual((th.swap_term_kib, th.swap_kill_kib), (200 * MIB, 100 * MIB))
        self.assertEqual(th.psi_mem_max_kib, 150 * MIB)
        self.assertEqual(th.trigger_kib, 150 * MIB)

    def test_percent_and_size_lower_wins(self):
        th = self.th(mem_percent=(10, 5), mem_size_kib=(64 * MIB, 8 * MIB))
        self.assertEqual((th.mem_term_kib, th.mem_kill_kib), (64 * MIB, 8 * MIB))
        th = self.th(mem_percent=(10, 5), mem_size_kib=(900 * MIB, 800 * MIB))
        self.assertEqual((th.mem_term_kib, th.mem_kill_kib), (100 * MIB, 50 * MIB))

    def test_built_whole(self):
        with self.assertRaises(TypeError):
            bustd.Thresholds()
        th = bustd.Thresholds(1000 * MIB, 0, (100 * MIB, 50 * MIB), (0, 0))
        self.assertEqual((th.trigger_kib, th.psi_mem_max_kib, th.thrash_stall_ms),
                         (100 * MIB, -1, None))
        th = self.th()
        self.assertEqual((th.thrash_stall_ms, th.thrash_horizon_s),
                         (bustd.DEFAULT_THRASH_STALL_MS, bustd.DEFAULT_THRASH_HORIZON_S))

    def test_psi_off_and_warn_raise_trigger(self):
        th = self.th(psi_avg10=None)
        self.assertEqual(th.trigger_kib, th.mem_term_kib)
        th = self.th(psi_avg10=None, warn_percent=30)
        self.assertEqual(th.trigger_kib, 300 * MIB)


class DecideTest(unittest.TestCase):
    def test_signal_for_each_reading(self):
        th = bustd.compute_thresholds(bustd.Settings(), 1000 * MIB, 0)
        th_swap = bustd.compute_thresholds(bustd.Settings(), 1000 * MIB, 1000 * MIB)
        th_swap_psi_only = bustd.compute_thresholds(bustd.Settings(thrash_stall_ms=None),
                                                    1000 * MIB, 1000 * MIB)
        T, K = signal.SIGTERM, signal.SIGKILL
        cases = [
            # name, thresholds, reading, expected
            ('plenty', th, reading(1000 * MIB, 500 * MIB), 0),
            ('just above term', th, reading(1000 * MIB, 100 * MIB + 1), 0),
            ('at term', th, reading(1000 * MIB, 100 * MIB), T),
            ('between', th, reading(1000 * MIB, 60 * MIB), T),
            ('at kill', th, reading(1000 * MIB, 50 * MIB), K),
            ('zero', th, reading(1000 * MIB, 0), K),
            ('swap still free', th_swap, reading(1000 * MIB, 10 * MIB, 1000 * MIB, 500 * MIB), 0),
            ('swap low too', th_swap, reading(1000 * MIB, 90 * MIB, 1000 * MIB, 100 * MIB), T),
            ('swap at kill, mem term', th_swap, reading(1000 * MIB, 90 * MIB, 1000 * MIB, 10 * MIB), T),
            ('both at kill', th_swap, reading(1000 * MIB, 40 * MIB, 1000 * MIB, 40 * MIB), K),
            ('mem kill, swap term', th_swap, reading(1000 * MIB, 40 * MIB, 1000 * MIB, 80 * MIB), T),
            ('mem kill, swap above term', th_swap, reading(1000 * MIB, 40 * MIB, 1000 * MIB, 150 * MIB), 0),
            ('psi high, mem below psi max', th, reading(1000 * MIB, 140 * MIB, psi=30.0), T),
            ('psi at level', th, reading(1000 * MIB, 140 * MIB, psi=25.0), T),
            ('psi high, mem above psi max', th, reading(1000 * MIB, 200 * MIB, psi=90.0), 0),
            ('psi low', th, reading(1000 * MIB, 140 * MIB, psi=24.9), 0),
            ('psi unknown', th, reading(1000 * MIB, 140 * MIB, psi=None), 0),
            # With swap the thrashing rule (off here: no trend) tells bursts from leaks.
            ('psi with swap free', th_swap, reading(1000 * MIB, 140 * MIB, 1000 * MIB, 900 * MIB, psi=50.0), 0),
            ('psi with swap, thrashing rule off', th_swap_psi_only,
             reading(1000 * MIB, 140 * MIB, 1000 * MIB, 900 * MIB, psi=50.0), T),
        ]
        for name, thresholds, r, expected in cases:
            with self.subTest(name):
                self.assertEqual(bustd.decide(r, thresholds), expected)

    def test_psi_off(self):
        th = bustd.compute_thresholds(bustd.Settings(psi_avg10=None), 1000 * MIB, 0)
        self.assertEqual(bustd.decide(reading(1000 * MIB, 140 * MIB, psi=99.0), th), 0)

    def test_trigger_text(self):
        th = bustd.compute_thresholds(bustd.Settings(), 1000 * MIB, 0)
        text = bustd.describe_trigger(reading(1000 * MIB, 40 * MIB, psi=3.0), th)
        self.assertIn('mem_available=40.0MiB(4.0%)', text)
        self.assertIn('swap=none', text)
        self.assertIn('psi_some_avg10=3.00', text)


def swap_reading(avail, anon, swap_used, stall_us, total=1000 * MIB, swap_total=1000 * MIB,
                 zram=(0, 0)):
    """Return an exact reading of a machine with swap: figures in KiB, stall total in us."""
    r = reading(total, avail, swap_total, swap_total - swap_used)
    r.anon_kib = anon
    r.stall_total_us = stall_us
    r.zram_stored_kib, r.zram_ram_kib = zram
    return r


def replay(th, timeline, step_s=0.1):
    """Feed readings made every step_s through one Trend; return [(time_s, signal, rule)].

    timeline(t) returns the reading at t (s), or None at the end.
    """
    trend, decisions, t = bustd.Trend(), [], 0.0
    while True:
        r = timeline(t)
        if r is None:
            return decisions
        trend.add(t, r, th.thrash_horizon_s)
        sig, rule = bustd.decide_rule(r, th, trend)
        decisions.append((round(t, 3), sig, rule))
        t += step_s


def lab_like(stop_growing_at_s=None, stall_fraction=0.6, growth_kib_s=60 * MIB, end_s=20.0,
             zram=False):
    """A timeline shaped like the lab's swap scenarios (1000 MiB RAM, 1000 MiB swap).

    RAM is full; the hog's memory goes to swap at growth_kib_s while every
    task stalls stall_fraction of the time.  A burst stops growing at
    stop_growing_at_s and keeps stalling as long again (refaults settling).
    """
    def at(t):
        if t > end_s:
            return None
        growing_for = t if stop_growing_at_s is None else min(t, stop_growing_at_s)
        swap_used = int(growing_for * growth_kib_s)
        stall_us = int(t * stall_fraction * 1e6)
        if stop_growing_at_s is not None and t > 2 * stop_growing_at_s:
            stall_us = int(2 * stop_growing_at_s * stall_fraction * 1e6)   # settled
        ram = (swap_used * 2 // 5) if zram else 0       # compressed 2.5:1
        return swap_reading(120 * MIB - ram // 4, 800 * MIB, min(swap_used, 1000 * MIB),
                            stall_us, zram=(swap_used, ram) if zram else (0, 0))
    return at


class ThrashRuleTest(unittest.TestCase):
    """The thrashing rule as a function of readings over time (PSI totals, swap, zram)."""

    def th(self, **kw):
        return bustd.compute_thresholds(bustd.Settings(**kw), 1000 * MIB, 1000 * MIB)

    def stalling_s(self, th, stall_fraction=0.6):
        """Return how long lab_like must grow and stall to reach the budget."""
        return th.thrash_stall_ms / 1000.0 / stall_fraction

    def first_kill(self, decisions):
        return next(((t, sig, rule) for t, sig, rule in decisions if sig), None)

    def test_a_leak_that_keeps_growing_is_killed_once_the_stall_adds_up(self):
        th = self.th()
        for zram in (False, True):
            with self.subTest(zram=zram):
                t, sig, rule = self.first_kill(replay(th, lab_like(zram=zram)))
                self.assertEqual((sig, rule), (signal.SIGTERM, 'thrash'))
                # The first growth window only measures the rate; then the
                # budget takes budget / 60 % of stalling.
                self.assertGreaterEqual(t, self.stalling_s(th))
                self.assertLessEqual(t, 0.6 + bustd.THRASH_GROWTH_WINDOW_S + self.stalling_s(th))

    def test_a_stall_counter_that_jumps_counts_no_more_than_the_time_elapsed(self):
        th = self.th()
        trend = bustd.Trend()
        for i in range(10):          # demand growing fast, counter sane, then a jump
            r = swap_reading(120 * MIB, 800 * MIB, i * 60 * MIB, 1 + (10 ** 18 if i == 9 else 0))
            trend.add(i * 0.1, r, th.thrash_horizon_s)
        self.assertLessEqual(trend.stall_ms(), 100)        # 0.1 s since the last sample
        self.assertEqual(bustd.decide_rule(r, th, trend), (0, None))

    def test_a_burst_that_ends_is_not_killed(self):
        th = self.th()
        # Grows and stalls until 85 % of the budget is counted (after the
        # first growth window), then stops growing and stalls as long again
        # while the swap settles: nothing, then or later, although the growth
        # window still sees growth for a moment after the end.
        burst_s = bustd.THRASH_GROWTH_WINDOW_S + 0.85 * self.stalling_s(th)
        decisions = replay(th, lab_like(stop_growing_at_s=burst_s, end_s=60.0))
        self.assertIsNone(self.first_kill(decisions))
        # The same burst a little longer is a leak as far as anyone can tell.
        t, sig, rule = self.first_kill(replay(th, lab_like(stop_growing_at_s=burst_s + 1.5)))
        self.assertEqual(rule, 'thrash')

    def test_stall_without_growth_is_not_counted(self):
        th = self.th()

        def refaulting(t):   # a working set bigger than RAM, but nothing grows
            return None if t > 30 else swap_reading(50 * MIB, 800 * MIB, 300 * MIB,
                                                    int(t * 0.9e6))
        self.assertIsNone(self.first_kill(replay(th, refaulting)))

    def test_growth_without_stall_is_not_counted(self):
        th = self.th()
        self.assertIsNone(self.first_kill(replay(th, lab_like(stall_fraction=0.0))))

    def test_growth_that_would_take_longer_than_the_horizon_is_not_counted(self):
        # 1000 MiB of swap and 120 MiB of RAM left at 10 MiB/s: about 100 s.
        th = self.th()
        slow = lab_like(growth_kib_s=10 * MIB, end_s=30.0)
        self.assertIsNone(self.first_kill(replay(th, slow)))
        self.assertEqual(self.first_kill(replay(self.th(thrash_horizon_s=200.0), slow))[2],
                         'thrash')

    def test_zram_room_is_the_ram_it_can_still_take(self):
        # 1 GiB zram holding 400 MiB in 160 MiB of RAM (2.5:1); 100 MiB of RAM
        # left: 250 MiB more fits, whatever the device's free slots say.
        r = swap_reading(100 * MIB, 500 * MIB, 400 * MIB, 0, swap_total=1024 * MIB,
                         zram=(400 * MIB, 160 * MIB))
        self.assertEqual(bustd.room_kib(r), 250 * MIB)
        disk = swap_reading(100 * MIB, 500 * MIB, 400 * MIB, 0, swap_total=1024 * MIB)
        self.assertEqual(bustd.room_kib(disk), 724 * MIB)
        self.assertEqual(bustd.demand_kib(disk), 900 * MIB)

    def fed(self, th, timeline, until_s):
        """Return a Trend fed timeline's readings every 0.1 s before until_s."""
        trend = bustd.Trend()
        for i in range(int(until_s * 10)):
            trend.add(i / 10.0, timeline(i / 10.0), th.thrash_horizon_s)
        return trend

    def test_old_stall_leaves_the_window(self):
        th = self.th()
        leak = lab_like()
        trend = self.fed(th, leak, 2.5)
        self.assertGreater(trend.stall_ms(), 500)
        quiet = leak(2.4)
        steps = int(bustd.THRASH_WINDOW_S * 10) + 20   # a window and 2 s, still
        for i in range(1, steps):
            trend.add(2.4 + i / 10.0, quiet, th.thrash_horizon_s)
        self.assertEqual(trend.stall_ms(), 0)
        self.assertIsNone(trend.left_s)
        self.assertLess(len(trend.samples), steps - 10)   # bounded history

    def test_a_reading_without_figures_starts_afresh(self):
        th = self.th()
        leak = lab_like()
        for broken in ('stall_total_us', 'anon_kib', 'exact'):
            with self.subTest(broken):
                trend = self.fed(th, leak, 3.0)
                self.assertGreater(trend.stall_ms(), 0)
                r = leak(3.0)
                setattr(r, broken, False if broken == 'exact' else None)
                trend.add(3.0, r, th.thrash_horizon_s)
                self.assertEqual((trend.stall_ms(), trend.samples), (0, []))

    def test_a_counter_that_goes_back_is_no_stall(self):
        th = self.th()
        leak = lab_like()
        trend = self.fed(th, leak, 2.0)
        before = trend.stall_ms()
        r = leak(2.0)
        r.stall_total_us = 5
        trend.add(2.0, r, th.thrash_horizon_s)
        self.assertEqual(trend.stall_ms(), before)

    def test_off(self):
        th = self.th(thrash_stall_ms=None)
        self.assertIsNone(self.first_kill(replay(th, lab_like())))

    def test_flags(self):
        self.assertIsNone(bustd.parse_settings(['--thrash', 'off']).thrash_stall_ms)
        s = bustd.parse_settings(['--thrash', '2000', '--thrash-horizon', '20'])
        self.assertEqual((s.thrash_stall_ms, s.thrash_horizon_s), (2000, 20.0))
        s = bustd.parse_settings([])
        self.assertEqual((s.thrash_stall_ms, s.thrash_horizon_s),
                         (bustd.DEFAULT_THRASH_STALL_MS, bustd.DEFAULT_THRASH_HORIZON_S))

    def test_the_memory_and_psi_rules_come_first(self):
        th = self.th()
        low = swap_reading(50 * MIB, 900 * MIB, 950 * MIB, 0)
        self.assertEqual(bustd.decide_rule(low, th, bustd.Trend()), (signal.SIGKILL, 'swap'))
        self.assertEqual(bustd.decide_rule(reading(1000 * MIB, 140 * MIB, psi=30.0), th),
                         (signal.SIGTERM, 'pressure'))
        self.assertEqual(bustd.decide_rule(reading(1000 * MIB, 500 * MIB), th), (0, None))

    def test_kill_line_names_the_rule_and_its_figures(self):
        th = self.th()
        trend = bustd.Trend()
        leak = lab_like(zram=True)
        t = 0.0
        while True:
            trend.add(t, leak(t), th.thrash_horizon_s)
            if bustd.decide(leak(t), th, trend):
                break
            t += 0.1
        text = bustd.describe_trigger(leak(t), th, trend)
        self.assertRegex(text, r'^rule=thrash ')
        self.assertRegex(text, r' stall=8[01]\d\dms/30s ')
        self.assertRegex(text, r' left=\d+\.\ds ')
        self.assertRegex(text, r' zram=\d+\.\dMiB\(2\.5:1\)$')


class SleepTimeTest(unittest.TestCase):
    FILL = 2.0 * GIB    # KiB/s

    def test_sleep_for_each_reading(self):
        th = bustd.compute_thresholds(bustd.Settings(), 16 * GIB, 0)
        th64 = bustd.compute_thresholds(bustd.Settings(), 64 * GIB, 0)
        th_swap = bustd.compute_thresholds(bustd.Settings(), 16 * GIB, 16 * GIB)
        fill = self.FILL
        cases = [
            ('far away', th, reading(16 * GIB, 5 * GIB), (5 * GIB - th.mem_term_kib) / fill),
            ('very far away: ceiling', th64, reading(64 * GIB, 60 * GIB), bustd.POLL_CEILING_S),
            ('at the threshold: floor', th, reading(16 * GIB, th.mem_term_kib), bustd.POLL_FLOOR_S),
            ('below: floor', th, reading(16 * GIB, 0), bustd.POLL_FLOOR_S),
            ('headroom / fill rate', th, reading(16 * GIB, th.mem_term_kib + 2 * GIB),
             2 * GIB / fill),
            ('swap headroom adds', th_swap,
             reading(16 * GIB, th.mem_term_kib + 1 * GIB, 16 * GIB, th_swap.swap_term_kib + 100 * MIB),
             1 * GIB / fill + 100 * MIB / float(bustd.SWAP_FILL_RATE_KIB_S)),
        ]
        for name, thresholds, r, expected in cases:
            with self.subTest(name):
                self.assertAlmostEqual(bustd.sleep_time_s(r, thresholds, fill), expected, places=6)

    def test_a_hog_at_the_fill_rate_is_seen_at_each_level_before_it_passes_it(self):
        # Simulate polling while memory drains at the model's fill rate: the
        # SIGTERM level is seen within one floor sleep of being crossed, and so,
        # polling on, is the SIGKILL level.
        th = bustd.compute_thresholds(bustd.Settings(), 1 * GIB, 0)
        avail = float(1 * GIB)
        rate = bustd.FILL_CAP_KIB_S
        for level_kib, sig in ((th.mem_term_kib, signal.SIGTERM),
                               (th.mem_kill_kib, signal.SIGKILL)):
            while bustd.decide(reading(1 * GIB, int(avail)), th) != sig:
                avail -= rate * bustd.sleep_time_s(reading(1 * GIB, int(avail)), th, rate)
            self.assertLessEqual(avail, level_kib)
            self.assertGreater(avail, level_kib - rate * bustd.POLL_FLOOR_S - 1)
    def test_a_faster_model_sleeps_less(self):
        th = bustd.compute_thresholds(bustd.Settings(), 1 * GIB, 0)
        r = reading(1 * GIB, 300 * MIB)
        self.assertAlmostEqual(bustd.sleep_time_s(r, th, 1 * GIB),
                               2 * bustd.sleep_time_s(r, th, 2 * GIB), places=6)

    def poll_until_decided(self, model_kib_s, hog_kib_s, total_kib=1 * GIB,
                           start_kib=900 * MIB, learn=True):
        """Drain memory at hog_kib_s, polling on the schedule; return (avail at the decision, th)."""
        th = bustd.compute_thresholds(bustd.Settings(), total_kib, 0)
        fill = bustd.FillModel()
        fill.base_kib_s = fill.rate_kib_s = model_kib_s
        avail, t, last, slept = float(start_kib), 0.0, None, 0.0
        while True:
            r = reading(total_kib, int(avail))
            if bustd.decide(r, th):
                return avail, th
            if last is not None and learn:
                fill.learn(last - avail, slept, t)
            last = avail
            slept = bustd.sleep_time_s(r, th, fill.rate_kib_s)
            t += slept
            avail -= hog_kib_s * slept

    def test_a_hog_within_the_model_is_seen_above_the_sigterm_level_minus_one_floor(self):
        for model, hog in ((8 * GIB, 8 * GIB), (1 * GIB, 1 * GIB), (1 * GIB, 300 * MIB)):
            with self.subTest(model=model, hog=hog):
                avail, th = self.poll_until_decided(model, hog)
                self.assertGreater(avail, th.mem_term_kib - hog * bustd.POLL_FLOOR_S - 1)

    def test_a_hog_faster_than_the_model_is_learned_from_the_readings(self):
        # The model says 512 MiB/s, the hog fills 700 MiB/s from 3.5 GiB of
        # 4 GiB: the first (ceiling) sleep shows the faster drop, and from
        # then on the schedule keeps pace; unlearned, it would overshoot.
        args = (512 * MIB, 700 * MIB, 4 * GIB, 3584 * MIB)
        avail, th = self.poll_until_decided(*args)
        self.assertGreater(avail, th.mem_term_kib - 700 * MIB * bustd.POLL_FLOOR_S - 1)
        unlearned, th = self.poll_until_decided(*args, learn=False)
        self.assertLess(unlearned, th.mem_term_kib - 100 * MIB)


class FillModelTest(unittest.TestCase):
    def test_base_rate_table(self):
        cal = 500 * MIB
        cases = [
            ('not calibrated: the old universal figure', None, 2, bustd.FILL_CAP_KIB_S),
            ('one CPU: safety x calibrated', cal, 1, bustd.FILL_SAFETY * cal),
            ('two CPUs: the safety factor covers the pair', cal, 2, bustd.FILL_SAFETY * cal),
            ('eight CPUs: x4 pairs', cal, 8, bustd.FILL_SAFETY * cal * 4),
            ('slow calibration: floor', 10 * MIB, 2, bustd.FILL_FLOOR_KIB_S),
            ('fast machine: capped at the old figure', 6 * GIB, 2, bustd.FILL_CAP_KIB_S),
        ]
        for name, calibrated, cpus, expected in cases:
            with self.subTest(name):
                model = bustd.FillModel(calibrated, cpus)
                self.assertAlmostEqual(model.base_kib_s, expected)
                self.assertEqual(model.rate_kib_s, model.base_kib_s)

    def test_learning_raises_the_rate_and_forgets_it(self):
        model = bustd.FillModel(500 * MIB, 2)
        base = model.base_kib_s
        self.assertEqual(model.learn(100 * MIB, 1.0, 5.0), base)      # slower than the model
        self.assertEqual(model.learn(-500 * MIB, 0.1, 5.1), base)     # memory freed
        fast = model.learn(1536 * MIB, 0.25, 6.0)                       # 6 GiB/s seen
        self.assertEqual(fast, bustd.FILL_SAFETY * 6 * GIB)
        self.assertGreater(fast, bustd.FILL_CAP_KIB_S)                 # seen beats the cap
        self.assertEqual(model.learn(0, 1.0, 6.0 + bustd.LEARNED_FORGET_S - 0.1), fast)
        self.assertEqual(model.learn(0, 1.0, 6.0 + bustd.LEARNED_FORGET_S), base)

    def test_calibration_measures_a_rate(self):
        kib_s = bustd.calibrate_fill_kib_s(size_kib=1024, repeats=1)
        self.assertIsNotNone(kib_s)
        self.assertGreater(kib_s, 0)

    def test_calibration_runs_in_a_child_process(self):
        here = os.getpid()
        self.assertNotEqual(bustd.calibrate_apart(lambda: float(os.getpid())), float(here))
        self.assertGreater(bustd.calibrate_apart(lambda: 2048.5), 2048.0)
        self.assertIsNone(bustd.calibrate_apart(lambda: None))
        self.assertIsNone(bustd.calibrate_apart(lambda: os._exit(3)))   # died unanswered

    def stuck_calibration(self):
        """Return (calibrate, pid_of_its_process): a calibration that never ends."""
        tmp = tempfile.mkdtemp(prefix='bustd-test-')
        self.addCleanup(shutil.rmtree, tmp, True)
        where = os.path.join(tmp, 'pid')

        def stuck():
            with open(where, 'w') as f:
                f.write(str(os.getpid()))
            time.sleep(60)
        return stuck, lambda: int(read_text(where) or 0)

    def test_a_calibration_that_hangs_is_abandoned_and_its_child_reaped(self):
        stuck, child = self.stuck_calibration()
        said = []
        self.assertIsNone(bustd.calibrate_apart(stuck, timeout_s=2, warn=said.append))
        self.assertNotIn(child(), (0, os.getpid()))
        self.assertFalse(os.path.exists('/proc/%d' % child()))   # killed and reaped
        self.assertEqual(said, ['the fill-rate calibration did not finish within 2 s: '
                                'assuming the fastest fill'])

    def test_sigterm_abandons_the_calibration_at_once(self):
        stuck, child = self.stuck_calibration()
        said = []
        started = time.monotonic()
        calls = []

        def stop():
            calls.append(time.monotonic())
            return len(calls) > 3            # SIGTERM came during the fourth slice
        self.assertIsNone(bustd.calibrate_apart(stuck, timeout_s=60, stop=stop,
                                                warn=said.append))
        self.assertLess(time.monotonic() - started, 30)   # not the 60 s timeout
        self.assertEqual(said, [])                         # a stop is no failure
        self.assertFalse(child() and os.path.exists('/proc/%d' % child()))

    def test_the_child_dies_of_a_sigterm_sent_to_it(self):
        # systemctl stop signals the whole cgroup: the child must not inherit the
        # daemon's flag-setting handler and calibrate on.
        self.addCleanup(signal.signal, signal.SIGTERM,
                        signal.signal(signal.SIGTERM, lambda *a: None))

        def terminated():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        said = []
        self.assertIsNone(bustd.calibrate_apart(terminated, timeout_s=20, warn=said.append))
        self.assertEqual(said, ['the fill-rate calibration ended without an answer: '
                                'assuming the fastest fill'])

    def test_sighup_and_sigusr1_do_not_end_the_calibration(self):
        # logrotate's SIGHUP, or `systemctl kill -s USR1` (every process of the unit),
        # during start-up: they never end the daemon, nor its calibration.
        def signalled():
            os.kill(os.getpid(), signal.SIGHUP)
            os.kill(os.getpid(), signal.SIGUSR1)
            return 1234.0
        said = []
        self.assertEqual(bustd.calibrate_apart(signalled, timeout_s=20, warn=said.append),
                         1234.0)
        self.assertEqual(said, [])

    def test_the_child_closes_what_is_open_whatever_the_fd_limit(self):
        # LimitNOFILE=infinity: closing every number up to the limit costs one
        # close(2) per number on Pythons before 3.10, minutes in all.
        from unittest import mock
        real_sysconf = os.sysconf
        huge = 1073741816
        low_fd, high_fd = os.open(os.devnull, os.O_RDONLY), 3000    # inherited, high
        os.dup2(low_fd, high_fd)    # (returns None on Python 3.6)
        os.close(low_fd)
        self.addCleanup(os.close, high_fd)

        def sysconf(name):
            return huge if name == 'SC_OPEN_MAX' else real_sysconf(name)

        def open_fds():   # the child's pipe, and the listing's own descriptor
            return float(len(os.listdir('/proc/self/fd')))
        said = []
        with mock.patch.object(os, 'sysconf', sysconf):
            self.assertEqual(bustd.calibrate_apart(open_fds, timeout_s=60, warn=said.append),
                             2.0)
            # Without a listing (no /proc): every number below CLOSE_FDS_MAX.
            self.assertEqual(bustd.calibrate_apart(open_fds, timeout_s=60, warn=said.append,
                                                   fd_dir='/nonexistent/fd'), 2.0)
        # sysconf's "no limit" (-1): still every number below CLOSE_FDS_MAX.
        with mock.patch.object(os, 'sysconf', lambda name: -1 if name == 'SC_OPEN_MAX'
                               else real_sysconf(name)):
            self.assertEqual(bustd.calibrate_apart(open_fds, timeout_s=60, warn=said.append,
                                                   fd_dir='/nonexistent/fd'), 2.0)
        self.assertEqual(said, [])

    def test_a_child_that_dies_slowly_is_left_for_the_loop_to_reap(self):
        from unittest import mock
        stuck, child = self.stuck_calibration()
        left = []
        with mock.patch.object(bustd, '_reap', lambda pid, patience_s=0: (0, 0)):
            self.assertIsNone(bustd.calibrate_apart(stuck, timeout_s=2, leftover=left.append))
        for pid in left:                            # our own child: reaped whatever happens
            self.addCleanup(bustd._reap, pid, 30)
        self.assertTrue(wait_until(lambda: child() != 0))
        self.assertEqual(left, [child()])          # SIGKILLed, still ours: not reused

        def a_zombie():
            st = bustd.parse_stat(bustd.read_small('/proc/%d/stat' % child()) or b'')
            return st is not None and st.state == 'Z'
        self.assertTrue(wait_until(a_zombie, 30))

    def test_an_inherited_ignored_sigchld_neither_fails_nor_kills_a_stranger(self):
        code = ('import signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); '
                'sys.path.insert(0, %r); import bustd; '
                'print(bustd.calibrate_apart(lambda: 1234.0))' % os.path.dirname(BUSTD))
        out = subprocess.run([sys.executable, '-c', code], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, universal_newlines=True, timeout=60)
        self.assertEqual((out.returncode, out.stdout), (0, '1234.0\n'))

    def test_the_daemon_resets_an_inherited_ignored_sigchld(self):
        flags = bustd.Flags()
        old = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        self.addCleanup(signal.signal, signal.SIGCHLD, old)
        handlers = {s: signal.getsignal(s) for s in bustd.EARLY_SIGNALS}
        self.addCleanup(lambda: [signal.signal(s, h) for s, h in handlers.items()])
        bustd.catch_signals(flags)
        self.assertEqual(signal.getsignal(signal.SIGCHLD), signal.SIG_DFL)

    def test_the_child_holds_none_of_the_daemons_files(self):
        # A stuck child holding the daemon's fds would keep the pidfile's lock and the
        # pipe that tells the launching command the daemon is up.
        read_fd, write_fd = os.pipe()
        self.addCleanup(os.close, read_fd)
        self.addCleanup(os.close, write_fd)

        def holds_it():
            try:
                os.fstat(write_fd)
                return 2.0
            except OSError:
                return 1.0
        self.assertEqual(bustd.calibrate_apart(holds_it), 1.0)

    def test_calibration_uses_the_clock_it_is_given(self):
        ticks = iter(range(100))
        kib_s = bustd.calibrate_fill_kib_s(size_kib=1024, repeats=2, clock=lambda: next(ticks))
        self.assertEqual(kib_s, 1024.0)    # every fault-in took one tick


class CalibrationInTheDaemonTest(TempDirTest):
    def test_the_daemon_never_maps_the_mmap_module(self):
        import mmap
        if not getattr(mmap, '__file__', None):
            self.skipTest('mmap is built into this Python: nothing to map')
        d = Daemon('--proc', self.proc.root)
        self.addCleanup(d.stop)
        self.assertTrue(d.wait_for('ready: watching'), d.text())
        self.assertRegex(d.text(), r'calibrated [\d.]+ \w+/s on one CPU')
        maps = read_text('/proc/%d/maps' % d.proc.pid)
        self.assertIn('python', maps)
        self.assertFalse(os.path.basename(mmap.__file__) in maps, 'mmap module mapped')


# ----------------------------------------------------------------------------
# Kernel readers
# ----------------------------------------------------------------------------

def fail_after(test, seconds, why):
    """Make a blocking call in test fail with `why` after `seconds` (SIGALRM)."""
    def on_alarm(signum, frame):
        raise AssertionError(why)
    test.addCleanup(signal.signal, signal.SIGALRM, signal.signal(signal.SIGALRM, on_alarm))
    signal.alarm(seconds)
    test.addCleanup(signal.alarm, 0)


class MachineSensorTest(TempDirTest):
    def test_the_reserve_is_the_kernels_not_doubled(self):
        # The schedule plans with MemFree - reserve: a doubled reserve halved idle sleeps.
        self.proc.write('zoneinfo', b'Node 0, zone   Normal\n        high     700\n'
                                    b'        managed  500000\n        protection: (0, 300)\n')
        sensor = bustd.MachineSensor(self.proc.root)
        sensor.check()
        sensor.read_reserve()
        self.assertEqual(sensor.reserve_kib, 1000 * os.sysconf('SC_PAGE_SIZE') // 1024)

    def test_a_huge_rss_in_a_proc_tree_is_no_traceback(self):
        self.proc.add(201, 'big', rss_pages=10 ** 320)     # --list: nothing is signalled
        self.proc.add(202, 'small')
        out = run_cli('--list', '--proc', self.proc.root, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertNotIn('Traceback', out.stderr)
        self.assertIn('small', out.stdout)
        self.assertNotIn('big', out.stdout)

    def test_a_fifo_in_the_proc_tree_does_not_hang(self):
        fifo = os.path.join(self.tmp, 'meminfo')
        os.mkfifo(fifo)
        fail_after(self, 5, 'reading a FIFO waited for a writer')
        self.assertEqual(bustd.read_file(fifo), b'')
        self.assertEqual(bustd.read_small(fifo), b'')
        out = run_cli('--list', '--proc', self.tmp, timeout=30)
        self.assertEqual(out.returncode, 1, out.stderr)
        self.assertIn('meminfo', out.stderr)

    def test_exact_reading(self):
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=3 * GIB, swap_total_kib=GIB,
                          swap_free_kib=512 * MIB)
        sensor = bustd.MachineSensor(self.proc.root)
        self.assertEqual(sensor.check(), [])
        r = sensor.read_exact(bustd.Reading())
        self.assertEqual((r.mem_total_kib, r.mem_available_kib, r.swap_total_kib, r.swap_free_kib),
                         (8 * GIB, 3 * GIB, GIB, 512 * MIB))
        self.assertTrue(r.exact)
        self.assertEqual(r.psi_some_avg10, 0.0)

    def test_old_kernel_without_memavailable(self):
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=0, with_available=False, free_kib=GIB,
                          cached_kib=GIB, buffers_kib=MIB, shmem_kib=2 * MIB)
        sensor = bustd.MachineSensor(self.proc.root)
        warnings = sensor.check()
        self.assertEqual(len(warnings), 1)
        self.assertIn('MemAvailable', warnings[0])
        self.assertEqual(sensor.read_exact(bustd.Reading()).mem_available_kib, 2 * GIB - MIB)

    def test_no_psi_is_one_warning_and_no_reading(self):
        os.unlink(os.path.join(self.proc.root, 'pressure/memory'))
        sensor = bustd.MachineSensor(self.proc.root)
        warnings = sensor.check()
        self.assertEqual(len(warnings), 1)
        self.assertIn('PSI', warnings[0])
        self.assertIsNone(sensor.read_exact(bustd.Reading()).psi_some_avg10)

    def test_odd_psi_file_does_not_crash(self):
        self.proc.write('pressure/memory', b'\xff\xfe nonsense')
        sensor = bustd.MachineSensor(self.proc.root)
        sensor.check()
        self.assertIsNone(sensor.read_exact(bustd.Reading()).psi_some_avg10)

    def test_missing_meminfo_is_an_environment_problem(self):
        os.unlink(os.path.join(self.proc.root, 'meminfo'))
        with self.assertRaises(bustd.EnvironmentProblem) as cm:
            bustd.MachineSensor(self.proc.root).check()
        self.assertIn('meminfo', str(cm.exception))

    def test_psi_read_only_where_the_rule_can_apply(self):
        self.proc.psi(40.0)
        sensor = bustd.MachineSensor(self.proc.root)
        sensor.check()
        th = bustd.compute_thresholds(bustd.Settings(), 8 * GIB, 0)
        self.proc.meminfo(8 * GIB, 6 * GIB)
        self.assertIsNone(sensor.read(bustd.Reading(), th).psi_some_avg10)
        self.proc.meminfo(8 * GIB, GIB)
        self.assertEqual(sensor.read(bustd.Reading(), th).psi_some_avg10, 40.0)

    def test_cheap_path_reads_meminfo_only_near_a_threshold(self):
        """With sysinfo, /proc/meminfo is read only when MemFree - reserve is near a level."""
        calls = bustd.KernelCalls()
        free = {'kib': 6 * GIB}

        def fake_sysinfo(r):
            r.mem_total_kib, r.mem_free_kib = 8 * GIB, free['kib']
            r.swap_total_kib = r.swap_free_kib = 0
        calls.sysinfo = fake_sysinfo
        sensor = bustd.MachineSensor(self.proc.root, calls)
        sensor.sysinfo = fake_sysinfo      # normally only for the real /proc
        sensor.reserve_kib = 100 * MIB
        sensor.uses_sysinfo = True
        th = bustd.compute_thresholds(bustd.Settings(), 8 * GIB, 0)
        self.proc.meminfo(8 * GIB, 300 * MIB)   # what an exact read would say
        r = sensor.read(bustd.Reading(), th)
        self.assertFalse(r.exact)
        self.assertEqual(r.mem_available_kib, 6 * GIB - 100 * MIB)
        free['kib'] = th.trigger_kib + 100 * MIB    # lower bound == trigger: read exactly
        r = sensor.read(bustd.Reading(), th)
        self.assertTrue(r.exact)
        self.assertEqual(r.mem_available_kib, 300 * MIB)

    def test_one_read_of_the_pressure_file_serves_both_rules(self):
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=512 * MIB)     # below the PSI rule's 15 %
        self.proc.psi(30.0, full_total_us=4242)
        sensor = bustd.MachineSensor(self.proc.root)
        sensor.check()
        th = bustd.compute_thresholds(bustd.Settings(), 8 * GIB, 0)
        reads = []
        real = bustd.read_small

        def counting(path, *args):
            reads.append(path)
            return real(path, *args)
        bustd.read_small = counting
        self.addCleanup(setattr, bustd, 'read_small', real)
        r = sensor.read_exact(bustd.Reading(), th)
        self.assertEqual((r.psi_some_avg10, r.stall_total_us), (30.0, 4242))
        self.assertEqual(reads.count(sensor.psi_path), 1)

    def test_stall_total_anon_and_zram_figures(self):
        sys_fs = os.path.join(self.tmp, 'sys')
        os.makedirs(os.path.join(sys_fs, 'block', 'zram0'))
        os.makedirs(os.path.join(sys_fs, 'block', 'zram1'))
        with open(os.path.join(sys_fs, 'block', 'zram0', 'mm_stat'), 'w') as f:
            # orig compr mem_used limit max same compacted huge: 400 MiB in 160 MiB
            f.write('%d %d %d 0 %d 0 0 0\n' % (400 << 20, 150 << 20, 160 << 20, 170 << 20))
        with open(os.path.join(sys_fs, 'block', 'zram1', 'mm_stat'), 'w') as f:
            f.write('%d 0 %d 0 0 0 0 0\n' % (64 << 20, 8 << 20))   # a zram /tmp, not swap
        self.proc.write('swaps', b'Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n'
                                 b'/dev/zram0                              partition\t'
                                 b'1048572\t\t409600\t\t100\n'
                                 b'/swapfile                               file\t\t'
                                 b'1048572\t\t0\t\t-2\n')
        self.proc.meminfo(8 * GIB, GIB, swap_total_kib=2 * GIB, swap_free_kib=GIB,
                          shmem_kib=10 * MIB, anon_kib=3 * GIB)
        self.proc.psi(5.0, 2.0, full_total_us=123456789)
        sensor = bustd.MachineSensor(self.proc.root, sys_fs=sys_fs)
        sensor.check()
        r = sensor.read_exact(bustd.Reading())
        self.assertEqual(r.stall_total_us, 123456789)
        self.assertEqual(r.anon_kib, 3 * GIB + 10 * MIB)
        self.assertEqual((r.zram_stored_kib, r.zram_ram_kib), (400 * MIB, 160 * MIB))
        self.assertEqual(bustd.demand_kib(r), 4 * GIB + 10 * MIB)

    def test_stall_total_is_read_for_the_thrashing_rule_only_when_it_is_on(self):
        self.proc.psi(0.0, full_total_us=42)
        sensor = bustd.MachineSensor(self.proc.root)
        sensor.check()
        on = bustd.compute_thresholds(bustd.Settings(), 8 * GIB, 0)
        off = bustd.compute_thresholds(bustd.Settings(thrash_stall_ms=None), 8 * GIB, 0)
        self.proc.meminfo(8 * GIB, 6 * GIB)      # far above the PSI rule's band
        self.assertEqual(sensor.read_exact(bustd.Reading(), on).stall_total_us, 42)
        self.assertIsNone(sensor.read_exact(bustd.Reading(), off).stall_total_us)
        self.assertIsNone(sensor.read_exact(bustd.Reading(), on).psi_some_avg10)

    def test_both_sensors_share_one_interface(self):
        machine = bustd.MachineSensor(self.proc.root)
        cgroup = bustd.CgroupSensor(self.tmp, 2, machine, make_log()[0])
        import inspect
        for sensor in (machine, cgroup):
            self.assertIsInstance(sensor, bustd.Sensor)
            self.assertEqual(list(inspect.signature(sensor.read_exact).parameters),
                             ['reading', 'th'])
            self.assertFalse(sensor.has_psi)    # until check() finds the file
        with open(bustd.__file__) as f:
            self.assertNotIn("getattr(sensor, 'has_psi'", f.read())

    def test_real_sysinfo_matches_meminfo(self):
        calls = bustd.load_kernel_calls()
        if calls.sysinfo is None:
            self.skipTest('no ctypes sysinfo here: %s' % calls.missing)
        r = bustd.Reading()
        calls.sysinfo(r)
        with open('/proc/meminfo', 'rb') as f:
            fields = bustd.parse_meminfo(f.read())
        self.assertEqual(r.mem_total_kib, fields['MemTotal'])
        self.assertEqual(r.swap_total_kib, fields['SwapTotal'])
        self.assertAlmostEqual(r.mem_free_kib, fields['MemFree'], delta=256 * MIB)


# ----------------------------------------------------------------------------
# Victim selection
# ----------------------------------------------------------------------------

class ParsePressureFiguresTest(unittest.TestCase):
    def test_psi_totals(self):
        cases = [
            (b'some avg10=1.00 avg60=0 avg300=0 total=5\nfull avg10=0.5 avg60=0 avg300=0 '
             b'total=77\n', 77),
            (b'some avg10=1.00 avg60=0 avg300=0 total=5\n', None),          # no full line
            (b'full avg10=0.5 avg60=0 avg300=0\n', None),                   # no total
            (b'full avg10=0.5 total=-3\n', None),
            (b'full avg10=0.5 total=1e9\n', None),
            (b'full avg10=0.5 total=inf\n', None),
            (b'full avg10=0.5 total=' + b'9' * 40 + b'\n', None),
            (b'\xff\xfe nonsense', None),
            (b'', None),
        ]
        for data, expected in cases:
            with self.subTest(data=data):
                self.assertEqual(bustd.parse_psi_total_us(data), expected)
        self.assertEqual(bustd.parse_psi_total_us(cases[0][0], b'some'), 5)

    def test_zram_mm_stat(self):
        cases = [
            (b'409600 163840 167936 0 172032 12 0 0 0\n', (400, 164)),
            (b'   1024    0    2048\n', (1, 2)),
            (b'1024 0\n', None),
            (b'a b c d\n', None),
            (b'-1 0 -5 0\n', None),
            (b'', None),
        ]
        for data, expected in cases:
            with self.subTest(data=data):
                self.assertEqual(bustd.parse_zram_mm_stat(data), expected)


class SelectionTest(TempDirTest):
    def scan(self, **kw):
        s = settings(self.proc, **kw)
        policy = bustd.Policy(s, kw.pop('only_uid', None) if 'only_uid' in kw else None)
        return bustd.scan_processes(s.proc, policy)

    def victim(self, **kw):
        victim, _ = bustd.pick_victim(self.scan(**kw), kw.get('sort_by_rss', False))
        return victim and victim.pid

    def test_highest_oom_score_wins(self):
        self.proc.add(10, oom_score=100)
        self.proc.add(11, oom_score=900)
        self.proc.add(12, oom_score=500)
        self.assertEqual(self.victim(), 11)

    def test_lazy_search_reads_whole_records_only_for_contenders(self):
        for pid in range(10, 60):
            self.proc.add(pid, oom_score=pid)
        self.proc.add(99, name='sshd', oom_score=999)
        self.proc.add(98, oom_score=998)
        s = settings(self.proc)
        from unittest import mock
        with mock.patch.object(bustd, 'read_process', wraps=bustd.read_process) as read:
            victim, skipped = bustd.find_victim(s.proc, bustd.Policy(s))
        self.assertEqual((victim.pid, [p.pid for p in skipped]), (98, [99]))
        self.assertEqual(sorted(c[0][1] for c in read.call_args_list), [98, 99])

    def test_full_ties_go_to_the_younger_process_in_both_searches(self):
        self.proc.add(300, oom_score=700, rss_pages=10, starttime=1000)
        self.proc.add(200, oom_score=700, rss_pages=10, starttime=2000)
        s = settings(self.proc)
        policy = bustd.Policy(s)
        self.assertEqual(bustd.find_victim(s.proc, policy)[0].pid, 200)
        self.assertEqual(bustd.pick_victim(bustd.scan_processes(s.proc, policy))[0].pid, 200)

    def test_ties_go_to_the_larger_rss(self):
        self.proc.add(10, oom_score=700, rss_pages=10)
        self.proc.add(11, oom_score=700, rss_pages=5000)
        self.proc.add(12, oom_score=700, rss_pages=20)
        self.assertEqual(self.victim(), 11)

    def test_never_killed(self):
        cases = [
            ('init', dict(pid=1, oom_score=2000)),
            ('kthreadd', dict(pid=2, ppid=0, flags=bustd.PF_KTHREAD, oom_score=2000)),
            ('kernel thread by flag', dict(pid=31, ppid=1, flags=bustd.PF_KTHREAD, oom_score=2000)),
            ('zombie', dict(pid=32, state='Z', oom_score=2000)),
            ('dead', dict(pid=33, state='X', oom_score=2000)),
            ('exiting', dict(pid=34, flags=bustd.PF_EXITING, oom_score=2000)),
            ('oom_score_adj -1000', dict(pid=35, adj=-1000, oom_score=2000)),
            ('bustd itself', dict(pid=os.getpid(), oom_score=2000)),
        ]
        for name, spec in cases:
            with self.subTest(name):
                self.proc.add(10, oom_score=5)
                pid = spec.pop('pid')
                self.proc.add(pid, **spec)
                self.assertEqual(self.victim(), 10)
                self.proc.remove(pid)

    def test_kernel_threads_are_not_even_listed(self):
        self.proc.add(30, ppid=2, name='kworker/0:1', flags=bustd.PF_KTHREAD)
        self.proc.add(10)
        self.assertEqual([p.pid for p in self.scan()], [10])

    def test_vanishing_and_unreadable_entries_are_skipped(self):
        self.proc.add(10, oom_score=100)
        self.proc.add(11, oom_score=900)
        os.unlink(os.path.join(self.proc.root, '11/oom_score'))   # vanished mid-scan
        os.makedirs(os.path.join(self.proc.root, '12'))            # hidepid: nothing readable
        self.proc.add(13, oom_score=950)
        self.proc.write('13/stat', b'13 (broken')                  # torn read
        os.makedirs(os.path.join(self.proc.root, 'self'))
        self.assertEqual(self.victim(), 10)

    def test_hostile_names_survive_scan_and_logging(self):
        self.proc.add(10, name='evil) Z 1 (x\n', oom_score=900, rss_pages=1)
        victim = self.victim()
        self.assertEqual(victim, 10)
        p = self.scan()[0]
        self.assertEqual(p.name, 'evil) Z 1 (x\n')
        self.assertEqual(p.state, 'S')
        line = bustd.kill_line(signal.SIGTERM, p, 'x')
        self.assertNotIn('\n', line)

    def test_nothing_killable(self):
        self.proc.add(1, oom_score=10)
        self.proc.add(20, name='sshd', oom_score=900)
        self.assertIsNone(self.victim())

    def test_empty_or_unreadable_proc(self):
        s = settings(os.path.join(self.tmp, 'nope'))
        self.assertEqual(bustd.scan_processes(s.proc, bustd.Policy(s)), [])


# ----------------------------------------------------------------------------
# Who may be killed: lists, preferences, matching
# ----------------------------------------------------------------------------

class PolicyTest(TempDirTest):
    def setUp(self):
        TempDirTest.setUp(self)
        add = self.proc.add
        add(100, name='firefox', oom_score=600, rss_pages=9000, uid=1000,
            cmdline=b'/usr/lib/firefox/firefox\0-contentproc\0')
        add(101, name='sshd', oom_score=900, rss_pages=100, cmdline=b'sshd: alice\0')
        add(102, name='java', oom_score=700, rss_pages=5000, uid=1000,
            cmdline=b'java\0-jar\0/srv/build-server.jar\0')
        add(103, name='java', oom_score=650, rss_pages=20000, uid=1000,
            cmdline=b'java\0-jar\0/srv/ide.jar\0')
        add(104, name='Xorg', oom_score=800, rss_pages=3000, uid=0)
        add(105, name='cc1plus', oom_score=500, rss_pages=4000, uid=1000)
        add(106, name='dpkg', oom_score=1000, rss_pages=300)

    def pick(self, argv=(), **kw):
        s = bustd.parse_settings(list(argv) + ['--proc', self.proc.root])
        for k, v in kw.items():
            setattr(s, k, v)
        policy = bustd.Policy(s)
        processes = bustd.scan_processes(s.proc, policy)
        victim, skipped = bustd.pick_victim(processes, s.sort_by_rss)
        answer = victim.pid if victim else None, [p.pid for p in skipped]
        # The kill path's lazy search must give the same answer as the full scan.
        fast_victim, fast_skipped = bustd.find_victim(s.proc, policy)
        self.assertEqual((fast_victim.pid if fast_victim else None,
                          [p.pid for p in fast_skipped]), answer)
        return answer

    def test_victim_for_each_setting(self):
        cases = [
            # argv, expected victim, expected skipped protected (outranking it)
            ((), 104, [106, 101]),                       # dpkg and sshd are default-protected
            (('--no-default-unkillables',), 106, []),
            (('-u', 'Xorg'), 102, [106, 101, 104]),
            (('-u', 'Xorg|java'), 100, [106, 101, 104, 102, 103]),
            (('-u', 'Xorg', '-u', 'java'), 100, [106, 101, 104, 102, 103]),
            (('-u', 'X*'), 102, [106, 101, 104]),
            (('--ignore', '^(Xorg|java)$'), 100, [106, 101, 104, 102, 103]),
            (('--ignore', 'org'), 102, [106, 101, 104]),                # regex search
            (('-u', 'org'), 104, [106, 101]),                           # glob is whole-name
            (('--ignore-root-user',), 102, [106, 101, 104]),
            (('--prefer', '^cc1'), 105, [106, 101]),                    # 500 + 300 = 800, RSS beats Xorg
            (('--avoid', '^Xorg$'), 102, [106, 101]),                   # 800 - 300 = 500
            (('--prefer', 'sshd'), 104, [101, 106]),                    # protected beats preferred
            (('--prefer', 'dpkg', '--no-default-unkillables'), 106, []),
            (('--sort-by-rss',), 103, []),
            (('--sort-by-rss', '-u', 'java'), 100, [103]),
            (('--sort-by-rss', '--prefer', 'Xorg'), 104, []),           # preference first
            (('--match', 'cmdline', '-u', '*ide.jar*'), 104, [106, 101]),
            (('--match', 'cmdline', '-u', '*ide.jar*', '--avoid', 'Xorg'), 102, [106, 101]),
            (('--match', 'cmdline', '--prefer', 'ide\\.jar'), 103, [106]),   # 650 + 300
            (('--match', 'cmdline', '--ignore', 'jar'), 104, [106, 101]),
            (('--match', 'name', '--ignore', 'jar'), 104, [106, 101]),  # names have no "jar"
        ]
        for argv, victim, skipped in cases:
            with self.subTest(argv=argv):
                self.assertEqual(self.pick(argv), (victim, skipped))

    def test_cmdline_matching_sees_nul_separated_words_as_spaces(self):
        s = bustd.parse_settings(['--proc', self.proc.root, '--match', 'cmdline',
                                  '-u', 'java -jar /srv/build-server.jar'])
        procs = bustd.scan_processes(s.proc, bustd.Policy(s))
        protected = dict((p.pid, p.protected) for p in procs)
        self.assertEqual(protected[102], '-u java -jar /srv/build-server.jar')
        self.assertIsNone(protected[103])

    def test_default_list_matches_names_even_in_cmdline_mode(self):
        self.assertEqual(self.pick(['--match', 'cmdline'])[0], 104)

    def test_not_root_kills_only_own_processes(self):
        s = bustd.parse_settings(['--proc', self.proc.root])
        procs = bustd.scan_processes(s.proc, bustd.Policy(s, only_uid=1000))
        victim, _ = bustd.pick_victim(procs)
        self.assertEqual(victim.pid, 102)

    def test_list_table(self):
        s = bustd.parse_settings(['--proc', self.proc.root, '--prefer', 'cc1', '--avoid', 'Xorg'])
        procs = bustd.scan_processes(s.proc, bustd.Policy(s))
        table = bustd.format_table(procs, False, lambda uid: {0: 'root', 1000: 'alice'}[uid])
        lines = table.split('\n')
        self.assertEqual(lines[0].split(), ['PID', 'USER', 'NAME', 'OOM_SCORE', 'ADJ', 'RSS', 'MARK'])
        self.assertIn('protected: default: dpkg', lines[1])
        self.assertEqual(lines[1].split()[0], '106')
        self.assertTrue(any('105' in l and 'preferred' in l and '<- victim' in l for l in lines))
        self.assertTrue(any('104' in l and 'avoided' in l for l in lines))
        self.assertTrue(any('alice' in l for l in lines))

    def test_describe_victim_names_the_skipped(self):
        s = bustd.parse_settings(['--proc', self.proc.root])
        procs = bustd.scan_processes(s.proc, bustd.Policy(s))
        victim, skipped = bustd.pick_victim(procs)
        text = bustd.describe_victim(victim, skipped, False)
        self.assertIn('highest oom_score 800', text)
        self.assertIn('106 dpkg (default: dpkg)', text)
        self.assertIn('101 sshd (default: sshd)', text)


class GroupRefusalTest(unittest.TestCase):
    def member(self, pid, pgrp=50, session=50, protected=None, never=None, name='w'):
        p = make_process(pid, name=name, pgrp=pgrp, session=session)
        p.protected, p.never = protected, never
        return p

    def test_refusal_for_each_group(self):
        cases = [
            ('fine', [self.member(50), self.member(51)], None, None),
            ('pid 1', [self.member(1), self.member(51)], None, 'PID 1'),
            ('bustd itself', [self.member(50), self.member(999)], None, 'bustd itself'),
            ("bustd's group", [self.member(50, pgrp=77)], None, 'bustd itself'),
            ("bustd's session", [self.member(50, session=88)], None, 'own session'),
            ('protected member', [self.member(50), self.member(51, protected='-u x', name='x')],
             None, 'contains 51 x (-u x)'),
            ('outside the cgroup', [self.member(50), self.member(51)], {50}, 'outside'),
        ]
        for name, members, cgroup, expected in cases:
            with self.subTest(name):
                refusal = bustd.group_refusal(members, 999, 77, 88, cgroup)
                if expected is None:
                    self.assertIsNone(refusal)
                else:
                    self.assertIn(expected, refusal)


# ----------------------------------------------------------------------------
# Killing real processes the tests started (fake meminfo, real /proc/PID)
# ----------------------------------------------------------------------------

class RealKillTest(TempDirTest):
    """The daemon's real kill path against the test's own children.

    The fake /proc holds a fake meminfo and symlinks to the real /proc/PID of
    children started here with oom_score_adj 1000, so nothing else can be
    chosen and no real memory pressure is needed.
    """

    def daemon(self, calls=None, **kw):
        log, sink = make_log(verbose=True)
        s = settings(self.proc, **kw)
        d = bustd.build_daemon(s, calls or bustd.load_kernel_calls(), log,
                               sleep=lambda seconds: None)
        d.start()
        return d, sink

    def victim(self, *args, **popen):
        child = start_victim(*args, **popen)
        self.addCleanup(stop, child)
        self.proc.link(child.pid)
        return child

    def test_sigterm_when_memory_is_low(self):
        bystander = self.victim()
        os.unlink(os.path.join(self.proc.root, str(bystander.pid)))   # not in the tree: invisible
        child = self.victim()
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)      # 8.5 %: SIGTERM
        d, sink = self.daemon()
        self.assertEqual(d.step(), 0.0)
        self.assertEqual(reap(child), -signal.SIGTERM)
        self.assertIsNone(bystander.poll())
        text = sink.text()
        self.assertIn('kill: SIGTERM pid=%d uid=%d name="python3"' % (child.pid, os.getuid()), text)
        self.assertIn('oom_score_adj=1000', text)
        self.assertIn('mem_available=700.0MiB(8.5%)', text)
        self.assertIn('exited: pid=%d' % child.pid, text)
        self.assertIn('chose pid %d because' % child.pid, text)

    def test_thrashing_rule_kills_and_says_why(self):
        child = self.victim()
        now = [100.0]
        d, sink = self.daemon()
        d.clock = lambda: now[0]
        delays = []
        for i in range(200):     # swap fills at 60 MiB/s while tasks stall 60 % of the time
            t = i / 10.0
            self.proc.meminfo(1000 * MIB, 120 * MIB, swap_total_kib=1000 * MIB,
                              swap_free_kib=1000 * MIB - int(t * 60 * MIB), anon_kib=800 * MIB)
            self.proc.psi(0.0, full_total_us=int(t * 0.6e6))
            delays.append(d.step())
            if child.poll() is not None:
                break
            now[0] += 0.1
        self.assertEqual(reap(child), -signal.SIGTERM)
        # Once growth is measured (0.5 s of samples) the stall counts, and is polled
        # every THRASH_POLL_S; before, a stall that may be harmless keeps the schedule.
        counted_from = int(round(bustd.THRASH_GROWTH_WINDOW_S / 0.1)) + 1
        self.assertTrue(all(delay <= bustd.THRASH_POLL_S for delay in delays[counted_from:]),
                        delays)
        line = next(m for _, m in sink.lines if m.startswith('kill: SIGTERM'))
        self.assertRegex(line, r' rule=thrash mem_available=120\.0MiB\(12\.0%\) .* '
                               r'stall=8[01]\d\dms/30s left=\d+\.\ds$')
        # 0.5 s to measure growth, then the budget at 60 % of stall
        self.assertGreaterEqual(i, int(bustd.DEFAULT_THRASH_STALL_MS / 60.0))
        self.assertEqual(d.trend.stall_ms(), 0)   # the next victim starts afresh

    def test_no_psi_turns_the_thrashing_rule_off_and_says_so(self):
        os.unlink(os.path.join(self.proc.root, 'pressure/memory'))
        s = settings(self.proc)
        sensor = bustd.MachineSensor(s.proc)
        sensor.check()
        th = bustd.compute_thresholds(s, 8 * GIB, 0)
        on = bustd.startup_lines(s, sensor, th, bustd.KernelCalls(), {})
        self.assertIn('thrashing rule: SIGTERM after 8000 ms of memory stall (PSI full) '
                      'within 30 s', '\n'.join(on))
        s.thrash_stall_ms = None
        off = bustd.startup_lines(s, sensor, bustd.compute_thresholds(s, 8 * GIB, 0),
                                  bustd.KernelCalls(), {})
        self.assertIn('thrashing rule: off (no PSI here)', off)

    def test_sigkill_at_the_kill_level(self):
        child = self.victim('ignore-term')
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=300 * MIB)      # 3.7 %: SIGKILL
        d, sink = self.daemon()
        d.step()
        self.assertEqual(reap(child), -signal.SIGKILL)
        self.assertIn('kill: SIGKILL pid=%d' % child.pid, sink.text())

    def test_nothing_happens_with_enough_memory(self):
        child = self.victim()
        d, sink = self.daemon()
        self.assertGreater(d.step(), 0)
        self.assertIsNone(child.poll())
        self.assertNotIn('kill:', sink.text())

    def test_escalates_when_memory_reaches_the_kill_level(self):
        child = self.victim('ignore-term')
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        d, sink = self.daemon()
        timer = threading.Timer(0.3, self.proc.meminfo, kwargs=dict(
            total_kib=8 * GIB, avail_kib=100 * MIB))
        timer.start()
        self.addCleanup(timer.cancel)
        d.step()
        self.assertEqual(reap(child), -signal.SIGKILL)
        self.assertIn('kill: SIGTERM pid=%d' % child.pid, sink.text())
        self.assertIn('escalating to SIGKILL: pid %d reached the SIGKILL level' % child.pid,
                      sink.text())

    def test_escalates_after_the_grace_time_if_memory_stays_low(self):
        child = self.victim('ignore-term')
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        log, sink = make_log()
        target = bustd.Target(self.scan_one(child.pid), bustd.load_kernel_calls(), self.proc.root)
        self.assertTrue(target.open())
        result = bustd.kill_and_wait(target, signal.SIGTERM, lambda: signal.SIGTERM, log,
                                     grace_s=0.3)
        target.close()
        self.assertTrue(result.exited)
        self.assertEqual(result.signal, signal.SIGKILL)
        self.assertGreaterEqual(result.elapsed_s, 0.3)
        self.assertEqual(reap(child), -signal.SIGKILL)
        self.assertIn('ignored SIGTERM', sink.text())

    def test_no_escalation_when_memory_recovered(self):
        child = self.victim('ignore-term')
        log, sink = make_log()
        target = bustd.Target(self.scan_one(child.pid), bustd.load_kernel_calls(), self.proc.root)
        self.assertTrue(target.open())
        result = bustd.kill_and_wait(target, signal.SIGTERM, lambda: 0, log, grace_s=0.2)
        target.close()
        self.assertFalse(result.exited)
        self.assertIn('memory recovered', result.note)
        self.assertIsNone(child.poll())

    def scan_one(self, pid):
        s = settings(self.proc)
        return [p for p in bustd.scan_processes(s.proc, bustd.Policy(s)) if p.pid == pid][0]

    def test_recycled_pid_is_never_signalled(self):
        child = self.victim()
        victim = self.scan_one(child.pid)
        victim.starttime -= 1          # as if the pid now belonged to a newer process
        for calls in (bustd.load_kernel_calls(), no_kernel_calls()):
            with self.subTest(pidfd=calls.pidfd_open is not None):
                target = bustd.Target(victim, calls, self.proc.root)
                self.assertFalse(target.open())
                self.assertFalse(target.send(signal.SIGTERM))
                target.close()
        self.assertIsNone(child.poll())

    def test_kill_without_pidfds_uses_the_start_time_check(self):
        child = self.victim()
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        d, sink = self.daemon(calls=no_kernel_calls())
        d.step()
        self.assertEqual(reap(child), -signal.SIGTERM)
        self.assertIn('exited: pid=%d' % child.pid, sink.text())

    def test_recovery_during_the_scan_means_no_kill(self):
        child = self.victim()
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        d, sink = self.daemon()
        d.sensor.read(d.reading, d.th)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=4 * GIB)   # recovered before act()
        d.act(signal.SIGTERM, 0.0)
        self.assertIsNone(child.poll())
        self.assertIn('memory recovered during the victim scan', sink.text())

    def test_victim_gone_before_the_signal(self):
        child = self.victim()
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        calls = bustd.load_kernel_calls()
        if calls.pidfd_open is None:
            self.skipTest('needs pidfd_open to place the race')
        real_open = calls.pidfd_open

        def victim_exits_first(pid):   # the victim dies between the choice and the signal
            child.kill()
            child.wait()
            return real_open(pid)
        calls.pidfd_open = victim_exits_first
        d, sink = self.daemon(calls)
        d.step()
        self.assertIn('pid %d python3: exited, was replaced or could not be opened before the '
                      'signal' % child.pid, sink.text())
        self.assertNotIn('kill: ', sink.text())
        self.assertEqual(child.returncode, -signal.SIGKILL)      # the test's kill, not bustd's

    def test_dry_run_sends_nothing_and_logs_once_a_second(self):
        child = self.victim()
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        now = [100.0]
        d, sink = self.daemon(dry_run=True)
        d.clock = lambda: now[0]
        for _ in range(5):
            d.step()
            now[0] += 0.1
        self.assertIsNone(child.poll())
        self.assertEqual(sink.text().count('dry run, no signal sent: kill: SIGTERM pid=%d'
                                           % child.pid), 1)
        now[0] += 1.0
        d.step()
        self.assertEqual(sink.text().count('dry run, no signal sent'), 2)
        self.assertIn('dry run: chose pid %d because: highest oom_score' % child.pid, sink.text())

    def test_only_one_victim_per_step(self):
        first = self.victim()
        second = self.victim()
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        d, sink = self.daemon()
        d.step()
        killed = [c for c in (first, second) if c.poll() is not None or
                  'exited: pid=%d' % c.pid in sink.text()]
        self.assertEqual(len(killed), 1)
        self.assertEqual(sink.text().count('kill: '), 1)

    def test_nothing_killable_is_logged_and_backs_off(self):
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        self.proc.add(1, name='init', oom_score=2000)
        self.proc.add(20, name='sshd', oom_score=1000)
        d, sink = self.daemon()
        self.assertEqual(d.step(), bustd.NO_VICTIM_RETRY_S)
        self.assertEqual(d.step(), bustd.NO_VICTIM_RETRY_S)
        self.assertEqual(sink.text().count('no process may be killed'), 1)

    def test_report_interval(self):
        now = [50.0]
        d, sink = self.daemon(report_interval_s=60.0)
        d.clock = lambda: now[0]
        for _ in range(3):          # the first poll reports, the next ones within 60 s don't
            d.step()
            now[0] += 20
        d.step()                    # 60 s later
        reports = [m for _, m in sink.lines if m.startswith('mem avail:')]
        self.assertEqual(reports, ['mem avail: 6.0 GiB of 8.0 GiB (75.0%), swap free: 0 KiB '
                                   'of 0 KiB (0.0%), psi some avg10: 0.00'] * 2)
        self.assertEqual(d.step(), bustd.sleep_time_s(d.reading, d.th, d.fill.rate_kib_s))

    def test_a_signal_that_fails_is_no_kill_and_no_spin(self):
        child = self.victim()
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        d, sink = self.daemon(calls=calls_refusing_signals(self))
        self.assertGreater(d.step(), 0)                            # a back-off, not a spin
        self.assertEqual(d.step(), bustd.NO_VICTIM_RETRY_S)        # passed over: nobody left
        self.assertEqual(d.kills, 0)
        self.assertEqual(sink.text().count('cannot signal it: Operation not permitted'), 1)
        self.assertIsNone(child.poll())

    def test_levels_above_a_lowered_total_fall_back_to_the_defaults(self):
        d, sink = self.daemon(mem_percent=(100.0, 100.0), mem_size_kib=(4 * GIB, 2 * GIB))
        self.assertEqual(d.th.mem_term_kib, 4 * GIB)
        self.proc.meminfo(total_kib=2 * GIB, avail_kib=GIB)     # the limit went down
        d.step()
        self.assertEqual((d.th.mem_term_kib, d.th.mem_kill_kib), (2 * GIB // 10, 2 * GIB // 20))
        self.assertIn('-m/-M is not below the memory total 2.0 GiB now', sink.text())

    def test_totals_change_recomputes_thresholds(self):
        d, sink = self.daemon()
        self.assertEqual(d.th.mem_term_kib, 8 * GIB // 10)
        self.proc.meminfo(total_kib=16 * GIB, avail_kib=12 * GIB)
        d.step()
        self.assertEqual(d.th.mem_term_kib, 16 * GIB // 10)
        self.assertIn('thresholds recomputed', sink.text())


class PreArmedVictimTest(TempDirTest):
    """The victim ranked ahead of time near a level, and its validation at the kill."""

    PID = 4000101    # above this machine's pid_max, below the kernel's ceiling

    def daemon(self, calls=None, **kw):
        # A "self" naming bustd makes the tree bustd's own: pids are checked
        # in it, not in the real /proc (where these do not exist).
        link = os.path.join(self.proc.root, 'self')
        if not os.path.lexists(link):
            os.symlink(str(os.getpid()), link)
        log, sink = make_log(verbose=True)
        s = settings(self.proc, **kw)
        now = [100.0]
        d = bustd.build_daemon(s, calls or no_kernel_calls(), log,
                               clock=lambda: now[0], sleep=lambda seconds: None)
        d.start()
        return d, sink, now

    def armed_in_a_fake_tree(self, **kw):
        """Arm on a fake tree: the hog (PID) ahead of a runner-up at 300; return (daemon, log, clock)."""
        self.proc.add(self.PID, 'hog', oom_score=600)
        self.proc.add(self.PID + 1, 'other', oom_score=300)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=1100 * MIB)      # 13.4 %: near
        d, sink, now = self.daemon(**kw)
        self.assertGreater(d.step(), 0)
        self.assertIsNotNone(d.armed)
        self.assertEqual(d.armed.victim.pid, self.PID)
        self.assertEqual(d.armed.runner_up, 300)
        return d, sink, now

    def test_armed_only_near_a_level_and_let_go_when_far(self):
        self.proc.add(self.PID, 'hog', oom_score=600)
        d, sink, now = self.daemon()
        d.step()                                                         # 75 %: far
        self.assertIsNone(d.armed)
        self.assertTrue(d.far)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=1100 * MIB)
        now[0] += 1
        d.step()
        self.assertEqual(d.armed.victim.pid, self.PID)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=6 * GIB)
        now[0] += 1
        d.step()
        self.assertIsNone(d.armed)

    def test_rankings_are_rate_limited(self):
        d, sink, now = self.armed_in_a_fake_tree()
        first = d.armed
        now[0] += bustd.ARM_REFRESH_S / 2
        d.step()
        self.assertIs(d.armed, first)                   # too soon: the same ranking
        now[0] += bustd.ARM_REFRESH_S
        d.step()
        self.assertIsNot(d.armed, first)
        self.assertEqual(d.armed.at_s, now[0])

    def test_no_pre_arming_with_process_group_or_cgroup_kills(self):
        for flag in ('kill_pgroup', 'kill_cgroup'):
            with self.subTest(flag):
                self.proc.add(self.PID, 'hog', oom_score=600)
                self.proc.meminfo(total_kib=8 * GIB, avail_kib=1100 * MIB)
                d, sink, now = self.daemon(**{flag: True})
                d.step()
                self.assertIsNone(d.armed)

    def test_a_victim_passed_over_after_a_failed_kill_is_neither_armed_nor_used(self):
        d, sink, now = self.armed_in_a_fake_tree()
        victim = d.armed.victim
        d.passed_over[(victim.pid, victim.starttime)] = now[0] + 60
        self.assertIsNone(d.take_armed(now[0]))
        self.assertIn('pre-armed pid %d hog not used: passed over after a failed kill'
                      % self.PID, sink.text())
        now[0] += 1
        d.arm(now[0])                    # ranks again: the runner-up is armed instead
        self.assertEqual(d.armed.victim.pid, self.PID + 1)

    def test_a_pass_over_ending_after_the_ranking_forces_a_new_one(self):
        # The ranking left out a bigger process passed over until now + 0.5 s;
        # a full ranking after that would choose it again, not the armed hog.
        self.proc.add(self.PID, 'hog', oom_score=600)
        self.proc.add(self.PID + 2, 'stuck', oom_score=900)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=1100 * MIB)
        d, sink, now = self.daemon()
        d.passed_over[(self.PID + 2, 5000)] = now[0] + 0.5
        d.step()
        self.assertEqual(d.armed.victim.pid, self.PID)
        d.sensor.read_exact(d.reading, d.th)
        self.assertIsNone(d.armed.refusal(d.settings.proc, d.policy, d.reading, None,
                                          now[0] + 0.4))
        self.assertEqual(d.armed.refusal(d.settings.proc, d.policy, d.reading, None,
                                         now[0] + 0.5),
                         'a process passed over at the ranking may be chosen again')
        now[0] += 0.5
        self.assertEqual(d.choose(now[0])[0].pid, self.PID + 2)

    def test_the_kills_per_minute_cap_holds_for_a_pre_armed_victim(self):
        d, sink, now = self.armed_in_a_fake_tree()
        d.kill_times = [now[0] - 1] * bustd.KILLS_PER_WINDOW
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)     # SIGTERM, not SIGKILL
        d.step()
        self.assertIsNotNone(d.armed)    # not taken: the cap came first
        self.assertIn('no more kills until the SIGKILL level', sink.text())

    def test_refusals(self):
        """Each change since the ranking that must force a full ranking instead."""
        def recycled(proc):
            proc.add(self.PID, 'hog', oom_score=600, starttime=9999)

        def exited(proc):
            proc.remove(self.PID)

        def zombie(proc):
            proc.add(self.PID, 'hog', oom_score=600, state='Z')

        def minus_1000(proc):
            proc.add(self.PID, 'hog', oom_score=0, adj=-1000)

        def renamed_to_a_protected_name(proc):
            proc.add(self.PID, 'sshd', oom_score=600)

        def runner_up_may_have_caught_up(proc):
            # 300 + 3.4 % of RAM used since (~34 points) > 330
            proc.add(self.PID, 'hog', oom_score=330)
            proc.meminfo(total_kib=8 * GIB, avail_kib=820 * MIB)

        cases = [
            (recycled, 'its pid was recycled'),
            (exited, 'it exited'),
            (zombie, 'it exited'),     # a zombie counts as gone
            (minus_1000, 'oom_score_adj -1000'),
            (renamed_to_a_protected_name, 'it is protected now (default: sshd'),
            (runner_up_may_have_caught_up, 'another process may have caught up (280 MiB used'),
        ]
        for change, why in cases:
            with self.subTest(change.__name__):
                self.proc = FakeProc(os.path.join(self.tmp, change.__name__))
                d, sink, now = self.armed_in_a_fake_tree()
                self.proc.meminfo(total_kib=8 * GIB, avail_kib=900 * MIB)
                change(self.proc)
                d.sensor.read_exact(d.reading, d.th)
                why_not = d.armed.refusal(d.settings.proc, d.policy, d.reading, None,
                                          now[0] + 0.1)
                self.assertTrue(why_not and why_not.startswith(why), why_not)

    def test_a_stale_ranking_is_not_used(self):
        d, sink, now = self.armed_in_a_fake_tree()
        d.sensor.read_exact(d.reading, d.th)
        self.assertIsNone(d.armed.refusal(d.settings.proc, d.policy, d.reading, None,
                                          now[0] + bustd.ARM_MAX_AGE_S))
        self.assertEqual(d.armed.refusal(d.settings.proc, d.policy, d.reading, None,
                                         now[0] + bustd.ARM_MAX_AGE_S + 0.01),
                         'the ranking is 1.01 s old')

    def test_still_ahead_and_fresh(self):
        d, sink, now = self.armed_in_a_fake_tree()
        self.proc.add(self.PID, 'hog', oom_score=700, rss_pages=9999)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=900 * MIB)
        d.sensor.read_exact(d.reading, d.th)
        armed = d.armed
        self.assertIsNone(armed.refusal(d.settings.proc, d.policy, d.reading, None, now[0]))
        self.assertEqual((armed.victim.oom_score, armed.victim.rss_kib), (700, 9999 * 4))

    def test_outside_the_watched_cgroup(self):
        d, sink, now = self.armed_in_a_fake_tree()
        d.sensor.read_exact(d.reading, d.th)
        self.assertEqual(d.armed.refusal(d.settings.proc, d.policy, d.reading,
                                         {self.PID + 1}, now[0]), 'it left the watched cgroup')

    def test_a_born_process_may_outrank_with_prefer(self):
        import re
        d, sink, now = self.armed_in_a_fake_tree(prefer_re=re.compile('nothing-matches'))
        self.assertEqual(d.armed.runner_up, 300)       # the runner-up beats a newborn's 300
        self.proc.add(self.PID + 1, 'other', oom_score=100)
        now[0] += 1
        d.step()
        self.assertEqual(d.armed.runner_up, bustd.PREFER_ADJUST)

    def test_a_default_protection_gained_by_exec_is_seen_with_the_same_name_and_owner(self):
        # A process named "dpkg" by prctl, run by a user from their own binary,
        # is no package manager; after exec of a root-owned dpkg its comm and
        # owner are unchanged, but a full ranking protects it now.
        binary = os.path.realpath(sys.executable)
        if os.stat(binary).st_uid != 0:
            self.skipTest('the Python binary is not root-owned here')
        self.proc.add(self.PID, 'dpkg', oom_score=600)
        self.proc.add(self.PID + 1, 'other', oom_score=300)
        self.proc.write('%d/status' % self.PID, b'Uid:\t1000\t1000\t1000\t1000\n')
        exe = os.path.join(self.proc.root, str(self.PID), 'exe')
        os.symlink(binary, exe)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=1100 * MIB)
        d, sink, now = self.daemon()
        d.step()
        self.assertEqual(d.armed.victim.pid, self.PID)      # not what the glob means
        os.unlink(exe)
        os.symlink(os.path.join(self.tmp, 'dpkg'), exe)
        os.symlink(binary, os.path.join(self.tmp, 'dpkg'))  # a root-owned file named dpkg
        d.sensor.read_exact(d.reading, d.th)
        self.assertEqual(d.armed.refusal(d.settings.proc, d.policy, d.reading, None, now[0]),
                         'it is protected now (default: dpkg)')
        self.assertEqual(bustd.find_victim(d.settings.proc, d.policy)[0].pid, self.PID + 1)

    def test_growth_absorbed_by_swap_counts_as_used_memory(self):
        # The runner-up grows by 1 GiB while the kernel swaps 1 GiB of others
        # out: available memory does not move, its oom_score rises by ~111.
        self.proc.add(self.PID, 'hog', oom_score=600)
        self.proc.add(self.PID + 1, 'other', oom_score=500)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=1100 * MIB,
                          swap_total_kib=1 * GIB, swap_free_kib=1 * GIB)
        d, sink, now = self.daemon()
        d.step()
        self.assertEqual(d.armed.victim.pid, self.PID)
        self.proc.add(self.PID + 1, 'other', oom_score=611)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=1100 * MIB,
                          swap_total_kib=1 * GIB, swap_free_kib=0)
        d.sensor.read_exact(d.reading, d.th)
        why = d.armed.refusal(d.settings.proc, d.policy, d.reading, None, now[0])
        self.assertTrue(why and why.startswith('another process may have caught up'), why)

    def test_the_held_pidfd_is_closed_when_a_ranking_has_no_exact_reading(self):
        calls = bustd.load_kernel_calls()
        if calls.pidfd_open is None:
            self.skipTest('no pidfds here')
        child = start_victim()
        self.addCleanup(stop, child)
        self.proc.link(child.pid)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=1100 * MIB)
        d, sink, now = self.daemon(calls=calls)
        d.step()
        held = d.armed.target
        self.assertEqual(list(held.fds), [child.pid])
        self.proc.write('meminfo', b'MemTotal: 8 kB\n')          # unreadable figures
        now[0] += bustd.ARM_REFRESH_S
        d.arm(now[0])                    # the same victim, but no exact reading: let go
        self.assertIsNone(d.armed)
        self.assertEqual(held.fds, {})

    def test_the_kill_line_shows_the_victim_as_validated_not_as_ranked(self):
        # Pidfds stood in for by a pipe: "signalled" writes to it, which
        # reads as the exit; nothing real is signalled.
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        sent = []

        def send(fd, sig):
            sent.append(sig)
            os.write(w, b'x')
            self.proc.meminfo(total_kib=8 * GIB, avail_kib=6 * GIB)
        calls = no_kernel_calls()
        calls.pidfd_open = lambda pid: os.dup(r)
        calls.pidfd_send_signal = send
        self.proc.add(self.PID, 'hog', oom_score=600)
        self.proc.add(self.PID + 1, 'other', oom_score=300)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=1100 * MIB)
        d, sink, now = self.daemon(calls=calls)
        d.step()
        self.assertEqual(d.armed.victim.name, 'hog')
        self.proc.add(self.PID, 'renamed', oom_score=700)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)       # SIGTERM
        now[0] += 0.1
        self.assertEqual(d.step(), 0.0)
        self.assertEqual(sent, [signal.SIGTERM])
        text = sink.text()
        self.assertIn('kill: SIGTERM pid=%d uid=%d name="renamed" oom_score=700 '
                      % (self.PID, os.getuid()), text)
        self.assertIn('(pre-armed)', text)

    def test_a_refused_victim_falls_back_to_a_full_ranking(self):
        d, sink, now = self.armed_in_a_fake_tree(dry_run=True)
        self.proc.add(self.PID, 'sshd', oom_score=600)       # protected since the ranking
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        now[0] += 0.1
        d.step()
        text = sink.text()
        self.assertIn('pre-armed pid %d hog not used: it is protected now' % self.PID, text)
        self.assertIn('dry run, no signal sent: kill: SIGTERM pid=%d ' % (self.PID + 1), text)
        self.assertIsNone(d.armed)


class IdleLoopTest(TempDirTest):
    """The idle wake-up: sleep, one reading, the schedule; back to step() when it matters."""

    def daemon(self, on_sleep, **overrides):
        log, sink = make_log()
        slept = []
        now = [10.0]

        def sleep(seconds):
            slept.append(seconds)
            now[0] += seconds
            on_sleep(len(slept), d)
        d = bustd.build_daemon(settings(self.proc, **overrides), no_kernel_calls(), log,
                               clock=lambda: now[0], sleep=sleep,
                               fill=bustd.FillModel(256 * MIB, 2))     # 512 MiB/s
        d.start()
        self.assertGreater(d.step(), 0)
        self.assertTrue(d.far)
        return d, slept

    def test_returns_when_a_reading_comes_near_a_level(self):
        def on_sleep(n, d):
            self.proc.meminfo(total_kib=8 * GIB, avail_kib=(3 - n) * GIB)   # 2, 1 GiB...
        d, slept = self.daemon(on_sleep)
        d.idle(0.1, 100.0)
        self.assertEqual(len(slept), 2)         # 1 GiB is below the near band (15 %)
        # The second sleep came from the schedule on the 2 GiB reading.
        self.assertAlmostEqual(slept[1], (2 * GIB - d.th.mem_term_kib) / d.fill.rate_kib_s)

    def test_learns_a_fast_drop_between_idle_readings(self):
        def on_sleep(n, d):
            self.proc.meminfo(total_kib=8 * GIB, avail_kib=6 * GIB - n * 512 * MIB)
        d, slept = self.daemon(on_sleep)
        d.idle(0.25, 100.0)                    # 512 MiB per 0.25 s: 2 GiB/s seen
        self.assertEqual(d.fill.rate_kib_s, bustd.FILL_SAFETY * 2 * GIB)

    def test_returns_after_the_budget_and_on_signals(self):
        d, slept = self.daemon(lambda n, d: None)
        d.idle(0.3, 1.0)
        # The next scheduled sleep (3 s, far from every level) would end past the
        # budget: back to the full step at once, never later than the budget.
        self.assertEqual(slept, [0.3])
        del slept[:]
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=int(0.8 * GIB) + 512 * MIB)
        d, slept = self.daemon(lambda n, d: None)
        del slept[:]
        d.idle(0.3, 3.0)                       # scheduled: 1 s sleeps (512 MiB at 512 MiB/s)
        self.assertEqual(slept, [0.3, 1.0, 1.0])
        del slept[:]

        def stop_on_second(n, d):
            if n == 2:
                d.flags.usr1 = True
        d, slept = self.daemon(stop_on_second)
        d.idle(0.01, 100.0)
        self.assertEqual(len(slept), 2)

    def test_the_loop_reaps_a_calibration_child_left_dying(self):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        self.addCleanup(lambda: bustd._reap(pid))
        self.assertTrue(wait_until(lambda: not alive(pid)))    # a zombie, still ours
        d, slept = self.daemon(lambda n, d: None)
        d.unreaped.append(pid)
        d.poll_once()
        self.assertEqual(d.unreaped, [])
        self.assertRaises(ChildProcessError, os.waitpid, pid, os.WNOHANG)

    def test_a_far_sleeper_is_released_whichever_way_the_loop_ends(self):
        class Sleeper(object):
            def __init__(self):
                self.calls, self.released = 0, 0

            def far(self, seconds):
                self.calls += 1
                return self.calls == 3        # a signal on the third sleep

            def release(self):
                self.released += 1
        d, slept = self.daemon(lambda n, d: None)
        d.far_sleep = Sleeper()
        d.idle(0.01, 100.0)
        self.assertEqual((d.far_sleep.calls, d.far_sleep.released), (3, 1))
        d.far_sleep = Sleeper()
        d.idle(0.6, 1.0)                          # the budget ends it
        self.assertEqual((d.far_sleep.calls, d.far_sleep.released), (1, 1))
        self.assertEqual(slept, [])               # the plain sleep is for full steps

    def test_the_loop_uses_the_idle_path_only_far_from_the_levels(self):
        calls = []

        def on_sleep(n, d):
            if n == 2:
                self.proc.meminfo(total_kib=8 * GIB, avail_kib=1 * GIB)     # near
            if n >= 4:
                d.flags.stop = signal.SIGTERM
        d, slept = self.daemon(on_sleep)
        real_idle = d.idle
        d.idle = lambda *a: calls.append(a) or real_idle(*a)
        d.run()
        self.assertEqual(len(slept), 4)
        self.assertEqual([budget for _, budget in calls], [bustd.IDLE_STEP_EVERY_S] * 2)

    def test_a_failing_step_backs_off_even_when_a_report_is_due(self):
        d, slept = self.daemon(lambda n, d: None, report_interval_s=1.0)

        def broken(*a):
            raise ValueError('a kernel surprise')
        d.sensor.read = broken
        for _ in range(10):
            d.poll_once()                    # never raises: the watch goes on
        self.assertEqual(slept, [bustd.NO_VICTIM_RETRY_S] * 10)

    def test_a_back_off_after_a_kill_decision_is_slept_even_when_a_report_is_due(self):
        d, slept = self.daemon(lambda n, d: None, report_interval_s=1.0)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=100 * MIB)   # no process to kill
        for _ in range(10):
            d.poll_once()
        self.assertEqual(len(slept), 10)
        self.assertTrue(all(s >= bustd.POLL_FLOOR_S for s in slept), slept)
        self.assertGreaterEqual(sum(slept), 10 * bustd.NO_VICTIM_RETRY_S * 0.99, slept)

    def test_a_failing_idle_reading_returns_to_the_guarded_step(self):
        d, slept = self.daemon(lambda n, d: None)
        reads = []

        def broken(*a):
            reads.append(a)
            raise ValueError('a kernel surprise')
        d.sensor.read = broken
        d.idle(0.5, 3.0)                     # returns instead of raising
        self.assertEqual((slept, len(reads)), ([0.5], 1))

    def test_every_idle_wait_stays_within_the_budget(self):
        term_kib = int(8 * GIB * 0.10)

        def on_sleep(n, d):
            self.proc.meminfo(total_kib=8 * GIB, avail_kib=6 * GIB)   # a 3 s schedule
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=term_kib + int(0.95 * GIB))
        d, slept = self.daemon(on_sleep)
        del slept[:]
        d.poll_once(max_sleep_s=2.0)         # a watchdog that wants a ping every 2 s
        self.assertLessEqual(sum(slept), 2.0 + 1e-9, slept)

    def test_one_wake_up_per_sleep_when_the_full_step_is_due_before_the_next(self):
        # A big idle box: the schedule sleeps 2.3 s; the full step is due at 3 s.  The
        # idle loop returns after one wait, not after a second 0.7 s one.
        def on_sleep(n, d):
            pass
        total = 8 * GIB
        self.proc.meminfo(total_kib=total, avail_kib=int(total * 0.10) + int(2.3 * 512 * MIB))
        d, slept = self.daemon(on_sleep)
        del slept[:]
        d.poll_once()
        self.assertEqual(len(slept), 1, slept)
        self.assertAlmostEqual(slept[0], 2.3, places=3)

    def test_a_full_step_comes_when_a_report_or_the_metrics_are_due(self):
        d, slept = self.daemon(lambda n, d: None)
        self.assertEqual(d.full_step_due_s(), bustd.IDLE_STEP_EVERY_S)
        self.assertGreater(bustd.IDLE_STEP_EVERY_S, 1.0)
        d, slept = self.daemon(lambda n, d: None, report_interval_s=1.0)
        self.assertEqual(d.full_step_due_s(), 1.0)   # the report came in step(), the next in 1 s
        d.poll_once()
        self.assertEqual(sum(slept), 1.0)            # one idle second, then the full step
        d, slept = self.daemon(lambda n, d: None,
                               metrics_file=os.path.join(self.tmp, 'bustd.prom'))
        d.metrics.next_write_s = d.clock() + 0.5
        self.assertEqual(d.full_step_due_s(), 0.5)
        d.metrics.next_write_s = d.clock() - 5       # overdue: the next poll, not a spin
        self.assertEqual(d.full_step_due_s(), bustd.POLL_FLOOR_S)

    def test_a_tiny_report_interval_cannot_make_the_idle_loop_spin(self):
        d, slept = self.daemon(lambda n, d: None, report_interval_s=0.0001)
        for _ in range(20):
            d.poll_once()
        self.assertGreaterEqual(min(slept), bustd.POLL_FLOOR_S, slept)

    def test_far_from_the_levels_a_stall_is_still_measured_every_thrash_poll(self):
        # A cache-heavy box swapping: MemAvailable far above the levels, MemFree low
        # enough for exact readings, and tasks stalling while anonymous memory grows.
        total = 8 * GIB
        state = {'anon': 2 * GIB, 'stall': 1}

        def write():
            self.proc.meminfo(total_kib=total, avail_kib=int(total * 0.10) + GIB // 2,
                              free_kib=100 * MIB, swap_total_kib=2 * GIB,
                              swap_free_kib=GIB // 4, anon_kib=state['anon'])
            self.proc.psi(0.0, full_total_us=state['stall'])

        def sleep(seconds):
            slept.append(seconds)
            now[0] += seconds
            state['anon'] += int(seconds * 100 * MIB)      # a leak, 100 MiB/s
            state['stall'] += int(seconds * 500000)        # stalled half the time
            write()
        write()
        log, sink = make_log()
        now, slept = [10.0], []
        d = bustd.build_daemon(settings(self.proc), no_kernel_calls(), log,
                               clock=lambda: now[0], sleep=sleep,
                               fill=bustd.FillModel(256 * MIB, 2))
        d.start()
        for _ in range(12):
            d.poll_once()
        self.assertTrue(d.trend.stalling)
        self.assertFalse(d.far)
        self.assertLessEqual(max(slept[-6:]), bustd.THRASH_POLL_S, slept)

    def test_a_background_stall_that_is_not_counted_keeps_the_idle_loop(self):
        # A cache-heavy box at rest (exact readings: MemFree low), its PSI full counter
        # creeping by a few microseconds (reclaim, refaults), memory use flat: the
        # thrashing rule cannot fire, so no 100 ms polls and no rankings.
        total = 16 * GIB
        state = {'stall': 1}

        def write():
            self.proc.meminfo(total_kib=total, avail_kib=12 * GIB, free_kib=100 * MIB,
                              swap_total_kib=2 * GIB, swap_free_kib=2 * GIB,
                              anon_kib=2 * GIB)
            self.proc.psi(0.0, full_total_us=state['stall'])
        now, slept = [10.0], []

        def sleep(seconds):
            slept.append(seconds)
            now[0] += seconds
            state['stall'] += max(1, int(seconds * 20))    # 20 us of stall per second
            write()
        write()
        self.proc.add(4000101, name='worker', oom_score=10)
        log, sink = make_log()
        d = bustd.build_daemon(settings(self.proc), no_kernel_calls(), log,
                               clock=lambda: now[0], sleep=sleep,
                               fill=bustd.FillModel(256 * MIB, 2))
        d.start()
        steps = []
        real_step = d.step
        d.step = lambda: steps.append(now[0]) or real_step()
        while now[0] < 70.0:
            d.poll_once()
        self.assertLessEqual(len(steps), 23, 'full steps in 60 s')
        self.assertIsNone(d.armed)
        self.assertFalse(d.trend.stalling)


class PreArmedKillTest(TempDirTest):
    """The real kill path with a pre-armed victim: the test's own children only."""

    daemon = RealKillTest.daemon     # the same fake /proc of real children
    victim = RealKillTest.victim

    def test_the_pre_armed_victim_is_signalled_without_a_ranking(self):
        for calls in (bustd.load_kernel_calls(), no_kernel_calls()):
            with self.subTest(pidfd=calls.pidfd_open is not None):
                child = self.victim()
                self.proc.meminfo(total_kib=8 * GIB, avail_kib=1100 * MIB)   # near: armed
                d, sink = self.daemon(calls)
                d.step()
                self.assertEqual(d.armed.victim.pid, child.pid)
                scans = []
                real_find_victim = bustd.find_victim
                bustd.find_victim = lambda *args: scans.append(args) or real_find_victim(*args)
                try:
                    self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
                    self.assertEqual(d.step(), 0.0)
                finally:
                    bustd.find_victim = real_find_victim
                self.assertEqual(reap(child), -signal.SIGTERM)
                self.assertEqual(scans, [])
                text = sink.text()
                self.assertIn('kill: SIGTERM pid=%d' % child.pid, text)
                self.assertRegex(text, r'latency: [0-9.]+ ms from the deciding reading to '
                                       r'the signal \(pre-armed\)')
                os.unlink(os.path.join(self.proc.root, str(child.pid)))

    def test_an_armed_victim_that_exited_is_not_hit_and_the_next_is_found(self):
        first = self.victim()
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=1100 * MIB)
        d, sink = self.daemon()
        d.step()
        self.assertIsNotNone(d.armed)
        armed_pid = d.armed.victim.pid
        second = self.victim()
        other = first if armed_pid == second.pid else second
        for child in (first, second):
            if child.pid == armed_pid:
                stop(child)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        d.step()
        self.assertEqual(reap(other), -signal.SIGTERM)
        text = sink.text()
        self.assertIn('pre-armed pid %d python3 not used: it exited' % armed_pid, text)
        self.assertRegex(text, r'latency: [0-9.]+ ms .*\(full ranking\)')

    def test_the_user_name_is_looked_up_after_the_signal(self):
        # A passwd lookup may read a file evicted from the page cache: never before the kill.
        child = self.victim()
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        calls = bustd.load_kernel_calls()
        if calls.pidfd_send_signal is None:
            self.skipTest('no pidfds here')
        order = []
        send = calls.pidfd_send_signal
        calls.pidfd_send_signal = lambda fd, sig: order.append('signal') or send(fd, sig)
        d, sink = self.daemon(calls)
        d.user_name = lambda uid: order.append('user name') or str(uid)
        d.notifier = bustd.Notifier(d.settings, bustd.Helpers(d.log), d.log, d.user_name, {})
        d.step()
        self.assertEqual(reap(child), -signal.SIGTERM)
        self.assertEqual(order[:2], ['signal', 'user name'])

    def test_the_latency_line_is_only_printed_with_verbose(self):
        child = self.victim()
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        log, sink = make_log(verbose=False)
        s = settings(self.proc)
        d = bustd.build_daemon(s, bustd.load_kernel_calls(), log, sleep=lambda seconds: None)
        d.start()
        d.step()
        self.assertEqual(reap(child), -signal.SIGTERM)
        self.assertNotIn('latency:', sink.text())


class GroupKillTest(TempDirTest):
    """-g against a process group the test created: a parent and its children."""

    GROUP = textwrap.dedent("""
        import os, signal, sys, time
        with open('/proc/self/oom_score_adj', 'w') as f:
            f.write('1000')
        kids = []
        for i in range(3):
            pid = os.fork()
            if pid == 0:
                if 'stubborn' in sys.argv:
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)
                while True:
                    time.sleep(1)
            kids.append(pid)
        sys.stdout.write(' '.join(map(str, kids)) + '\\n')
        sys.stdout.flush()
        while True:
            time.sleep(1)
    """)

    def start_group(self, *args):
        leader = subprocess.Popen([sys.executable, '-c', self.GROUP] + list(args),
                                  stdout=subprocess.PIPE, start_new_session=True)
        kids = [int(x) for x in leader.stdout.readline().split()]

        def cleanup():
            try:
                os.killpg(leader.pid, signal.SIGKILL)
            except OSError:
                pass
            leader.wait()
            leader.stdout.close()
        self.addCleanup(cleanup)
        for pid in [leader.pid] + kids:
            self.proc.link(pid)
        return leader, kids

    def run_daemon(self, **kw):
        log, sink = make_log(verbose=True)
        s = settings(self.proc, kill_pgroup=True, **kw)
        d = bustd.build_daemon(s, bustd.load_kernel_calls(), log)
        d.start()
        d.step()
        return sink

    def gone(self, pid):
        try:
            with open('/proc/%d/stat' % pid, 'rb') as f:
                return bustd.parse_stat(f.read()).state in ('Z', 'X')
        except OSError:
            return True

    def test_whole_group_is_killed(self):
        bystander = start_victim()     # same uid, own group, oom_score_adj 1000, not in the tree
        self.addCleanup(stop, bystander)
        leader, kids = self.start_group()
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        sink = self.run_daemon()
        self.assertEqual(reap(leader), -signal.SIGTERM)
        for pid in kids:
            self.assertTrue(self.gone(pid), pid)
        self.assertIsNone(bystander.poll())
        self.assertIn('kill: SIGTERM pgrp=%d pid=' % leader.pid, sink.text())

    def test_group_that_ignores_sigterm_is_escalated(self):
        leader, kids = self.start_group('stubborn')
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        timer = threading.Timer(0.3, self.proc.meminfo, kwargs=dict(
            total_kib=8 * GIB, avail_kib=100 * MIB))
        timer.start()
        self.addCleanup(timer.cancel)
        sink = self.run_daemon()
        reap(leader)
        for pid in kids:
            self.assertTrue(self.gone(pid), pid)
        self.assertIn('escalating to SIGKILL', sink.text())

    def test_refuses_a_group_in_its_own_session(self):
        child = start_victim()           # same session as this test (and the daemon)
        self.addCleanup(stop, child)
        self.proc.link(child.pid)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        sink = self.run_daemon()
        self.assertEqual(reap(child), -signal.SIGTERM)   # killed alone
        self.assertIn('not signalling process group', sink.text())


class KillCgroupRefusalTest(unittest.TestCase):
    """--kill-cgroup: which cgroups are never killed as a whole."""

    def member(self, pid, name='worker', never=None, protected=None):
        p = make_process(pid, name=name)
        p.never, p.protected = never, protected
        return p

    def test_refusals(self):
        root = '/sys/fs/cgroup'
        ok = [self.member(50), self.member(51, never='exiting')]
        cases = [
            # (cgroup, own, watched, members, has_children, expected)
            (root + '/app.slice/foo.service', root + '/bustd.service', None, ok, False, None),
            (root, root + '/bustd.service', None, ok, False, 'root cgroup'),
            (root + '/init.scope', None, None, ok, False, 'init.scope'),
            (root + '/bustd.service', root + '/bustd.service', None, ok, False, 'bustd itself'),
            (root + '/system.slice', root + '/system.slice/bustd.service', None, ok, False,
             'bustd itself'),
            (root + '/sys', root + '/system.slice/bustd.service', None, ok, False, None),
            (root + '/build.slice', None, root + '/build.slice', ok, False, 'watched --cgroup'),
            (root + '/build.slice/a', None, root + '/build.slice', ok, False, None),
            (root + '/app.slice', None, None, ok, True, 'not a leaf'),
            (root + '/app.slice/x', None, None, ok + [self.member(1, never='init')], False,
             'holds 1 worker (init)'),
            (root + '/app.slice/x', None, None,
             ok + [self.member(60, 'sshd', protected='default: sshd')], False,
             'holds 60 sshd (default: sshd)'),
            (root + '/app.slice/x', None, None,
             ok + [self.member(61, never='oom_score_adj -1000')], False, 'oom_score_adj -1000'),
        ]
        for path, own, watched, members, children, expected in cases:
            with self.subTest(path=path, own=own):
                refusal = bustd.cgroup_kill_refusal(path, root, own, watched, members, children)
                if expected is None:
                    self.assertIsNone(refusal)
                else:
                    self.assertIn(expected, refusal or '')

    def test_victim_cgroup_prefers_v2_unless_in_its_root(self):
        tmp = tempfile.mkdtemp(prefix='bustd-test-')
        self.addCleanup(shutil.rmtree, tmp, True)
        proc = FakeProc(os.path.join(tmp, 'proc'))
        proc.write('self/mountinfo', (
            '30 20 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n'
            '31 20 0:27 /ctr /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n'
        ).encode())
        proc.write('7/cgroup', b'4:memory:/ctr/svc\n0::/app.slice/a.scope\n')
        proc.write('8/cgroup', b'4:memory:/ctr/svc\n0::/\n')
        proc.write('9/cgroup', b'1:name=systemd:/x\n')
        self.assertEqual(bustd.victim_cgroup(proc.root, 7),
                         ('/sys/fs/cgroup/unified/app.slice/a.scope', '/sys/fs/cgroup/unified', 2))
        self.assertEqual(bustd.victim_cgroup(proc.root, 8),
                         ('/sys/fs/cgroup/memory/svc', '/sys/fs/cgroup/memory', 1))
        self.assertEqual(bustd.victim_cgroup(proc.root, 7, version=1),
                         ('/sys/fs/cgroup/memory/svc', '/sys/fs/cgroup/memory', 1))
        self.assertIsNone(bustd.victim_cgroup(proc.root, 9))

    def test_cli_refuses_with_kill_pgroup(self):
        out = run_cli('--kill-cgroup', '-g', '--list')
        self.assertEqual(out.returncode, 2)
        self.assertIn('choose one', out.stderr)


# ----------------------------------------------------------------------------
# cgroup mode: fake trees, then real memory pressure in a test-made cgroup
# ----------------------------------------------------------------------------

class FakeCgroupTest(TempDirTest):
    def make(self, version, files):
        path = os.path.join(self.tmp, 'cg', 'parent', 'child')
        os.makedirs(path)
        for name, text in files.items():
            with open(os.path.join(path if '/' not in name else os.path.join(self.tmp, 'cg'),
                                   name.split('/')[-1]), 'w') as f:
                f.write(text)
        log, _ = make_log()
        sensor = bustd.CgroupSensor(path, version, bustd.MachineSensor(self.proc.root), log)
        return path, sensor

    def test_v2_available_counts_file_cache_and_ancestor_limits(self):
        path, sensor = self.make(2, {
            'memory.current': '%d\n' % (200 << 20), 'memory.max': 'max\n',
            'memory.stat': 'anon 150000000\nfile 50000000\nactive_file %d\ninactive_file %d\n'
                           % (10 << 20, 20 << 20),
            'memory.swap.current': '0\n', 'memory.swap.max': 'max\n',
            'memory.pressure': 'some avg10=12.00 avg60=0 avg300=0 total=1\n'
                               'full avg10=1.00 avg60=0 avg300=0 total=1\n'})
        self.write_files(os.path.dirname(path), {     # the parent's limit applies
            'memory.max': '%d\n' % (256 << 20), 'memory.current': '%d\n' % (200 << 20),
            'memory.stat': 'active_file %d\ninactive_file %d\n' % (10 << 20, 20 << 20)})
        self.assertEqual(sensor.check(), [])
        r = sensor.read_exact(bustd.Reading())
        self.assertEqual(r.mem_total_kib, 256 * MIB)
        self.assertEqual(r.mem_available_kib, (256 - 200 + 30) * MIB)
        self.assertEqual(r.psi_some_avg10, 12.0)
        self.assertEqual(r.swap_total_kib, 0)     # the fake machine has no swap

    def test_a_parents_limit_is_shared_with_siblings(self):
        """Parent: 200 MiB limit, 189 MiB used (siblings); us: 32 MiB, no limit of our own."""
        path, sensor = self.make(1, {
            'memory.usage_in_bytes': '%d\n' % (32 << 20),
            'memory.limit_in_bytes': '9223372036854771712\n',
            'memory.stat': 'total_active_file 0\ntotal_inactive_file 0\n'})
        self.write_files(os.path.dirname(path), {
            'memory.limit_in_bytes': '%d\n' % (200 << 20),
            'memory.usage_in_bytes': '%d\n' % (189 << 20),
            'memory.stat': 'total_active_file %d\ntotal_inactive_file 0\n' % (1 << 20)})
        sensor.check()
        r = sensor.read_exact(bustd.Reading())
        self.assertEqual((r.mem_total_kib, r.mem_available_kib), (200 * MIB, 12 * MIB))
        th = bustd.compute_thresholds(bustd.Settings(), 200 * MIB, 0)
        self.assertEqual(bustd.decide(r, th), signal.SIGTERM)
        self.assertEqual(sensor.read(bustd.Reading(), th).mem_available_kib, 12 * MIB)

    def test_v1_limits_up_the_hierarchy_and_total_counters(self):
        path, sensor = self.make(1, {
            'memory.usage_in_bytes': '%d\n' % (400 << 20),
            'memory.limit_in_bytes': '9223372036854771712\n',
            'memory.stat': 'cache 1\ntotal_active_file %d\ntotal_inactive_file %d\n'
                           % (16 << 20, 16 << 20),
            'memory.memsw.usage_in_bytes': '%d\n' % (400 << 20)})
        self.write_files(os.path.dirname(path), {
            'memory.limit_in_bytes': '%d\n' % (512 << 20),
            'memory.usage_in_bytes': '%d\n' % (400 << 20),
            'memory.stat': 'total_active_file %d\ntotal_inactive_file %d\n'
                           % (16 << 20, 16 << 20)})
        warnings = sensor.check()
        self.assertEqual(len(warnings), 1)
        self.assertIn('cgroup v1', warnings[0])           # no PSI there
        r = sensor.read_exact(bustd.Reading())
        self.assertEqual((r.mem_total_kib, r.mem_available_kib), (512 * MIB, (112 + 32) * MIB))

    def test_a_lowered_limit_is_noticed(self):
        path, sensor = self.make(2, {
            'memory.current': '%d\n' % (190 << 20), 'memory.max': '%d\n' % (2 << 30),
            'memory.stat': ''})
        sensor.check()
        th = bustd.compute_thresholds(bustd.Settings(), 2 * GIB, 0)
        self.assertFalse(sensor.read(bustd.Reading(), th).exact)
        self.write_files(path, {'memory.max': '%d\n' % (200 << 20)})
        sensor.next_refresh = 0          # as if LIMIT_REFRESH_S had passed
        r = sensor.read(bustd.Reading(), th)
        self.assertEqual((r.mem_total_kib, r.mem_available_kib), (200 * MIB, 10 * MIB))

    def test_v2_pressure_total_and_anon_for_the_thrashing_rule(self):
        path, sensor = self.make(2, {
            'memory.current': '%d\n' % (200 << 20), 'memory.max': '%d\n' % (256 << 20),
            'memory.stat': 'anon %d\nshmem %d\nswapcached %d\nactive_file 0\n'
                           % (150 << 20, 4 << 20, 2 << 20),
            'memory.swap.current': '%d\n' % (64 << 20), 'memory.swap.max': 'max\n',
            'memory.pressure': 'some avg10=1.00 avg60=0 avg300=0 total=900\n'
                               'full avg10=1.00 avg60=0 avg300=0 total=700\n'})
        self.proc.meminfo(8 * GIB, 6 * GIB, swap_total_kib=GIB, swap_free_kib=GIB)
        sensor.check()
        th = bustd.compute_thresholds(bustd.Settings(), 256 * MIB, 0)
        r = sensor.read_exact(bustd.Reading(), th)
        self.assertEqual(r.stall_total_us, 700)
        self.assertEqual(r.anon_kib, 152 * MIB)
        self.assertEqual(bustd.demand_kib(r), (152 + 64) * MIB)

    def test_v1_swap_limits_of_ancestors_count(self):
        """Parent: memory 200 MiB, memory+swap 264 MiB: this cgroup may swap 64 MiB at most."""
        path, sensor = self.make(1, {
            'memory.usage_in_bytes': '%d\n' % (32 << 20),
            'memory.limit_in_bytes': '9223372036854771712\n',
            'memory.memsw.limit_in_bytes': '9223372036854771712\n',
            'memory.memsw.usage_in_bytes': '%d\n' % (40 << 20),
            'memory.stat': ''})
        self.write_files(os.path.dirname(path), {
            'memory.limit_in_bytes': '%d\n' % (200 << 20),
            'memory.memsw.limit_in_bytes': '%d\n' % (264 << 20),
            'memory.usage_in_bytes': '%d\n' % (32 << 20), 'memory.stat': ''})
        self.proc.meminfo(8 * GIB, 6 * GIB, swap_total_kib=GIB, swap_free_kib=GIB)
        sensor.check()
        r = sensor.read_exact(bustd.Reading())
        self.assertEqual((r.swap_total_kib, r.swap_free_kib), (64 * MIB, 56 * MIB))

    def write_files(self, directory, files):
        for name, text in files.items():
            with open(os.path.join(directory, name), 'w') as f:
                f.write(text)

    def test_cheap_reading_is_limit_minus_usage(self):
        path, sensor = self.make(2, {
            'memory.current': '%d\n' % (100 << 20), 'memory.max': '%d\n' % (1 << 30),
            'memory.stat': 'active_file %d\n' % (500 << 20)})
        sensor.check()
        th = bustd.compute_thresholds(bustd.Settings(), GIB, 0)
        r = sensor.read(bustd.Reading(), th)
        self.assertFalse(r.exact)
        self.assertEqual(r.mem_available_kib, 924 * MIB)
        with open(os.path.join(path, 'memory.current'), 'w') as f:
            f.write('%d\n' % (950 << 20))
        r = sensor.read(bustd.Reading(), th)
        self.assertTrue(r.exact)
        self.assertEqual(r.mem_available_kib, (74 + 500) * MIB)

    def test_no_limit_falls_back_to_the_machine(self):
        path, sensor = self.make(2, {'memory.current': '1000\n', 'memory.max': 'max\n',
                                     'memory.stat': ''})
        warnings = sensor.check()
        self.assertTrue(any('no memory limit' in w for w in warnings))
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=3 * GIB)
        r = sensor.read_exact(bustd.Reading())
        self.assertEqual((r.mem_total_kib, r.mem_available_kib), (8 * GIB, 3 * GIB))

    def test_member_pids_include_descendants(self):
        path, sensor = self.make(2, {'memory.current': '1\n', 'cgroup.procs': '10\n11\n'})
        os.makedirs(os.path.join(path, 'sub'))
        with open(os.path.join(path, 'sub', 'cgroup.procs'), 'w') as f:
            f.write('12\n')
        self.assertEqual(sensor.member_pids(), {10, 11, 12})

    def test_resolve(self):
        v1 = os.path.join(self.tmp, 'fs', 'memory', 'svc')
        v2 = os.path.join(self.tmp, 'fs', 'unified', 'app.slice')
        os.makedirs(v1)
        os.makedirs(v2)
        open(os.path.join(v1, 'memory.usage_in_bytes'), 'w').close()
        open(os.path.join(v2, 'memory.current'), 'w').close()
        self.proc.write('self/mountinfo', (
            '30 20 0:26 / %s/fs/unified rw - cgroup2 cgroup2 rw\n'
            '31 20 0:27 / %s/fs/memory rw,relatime - cgroup cgroup rw,memory\n'
            % (self.tmp, self.tmp)).encode())
        self.proc.write('self/cgroup', b'4:memory:/svc\n0::/app.slice\n')
        resolve = lambda spec: bustd.resolve_cgroup(spec, self.proc.root, self.tmp)
        self.assertEqual(resolve('auto'), (v2, 2))
        self.assertEqual(resolve(v1), (v1, 1))
        self.assertEqual(resolve('svc'), (v1, 1))
        self.assertEqual(resolve('/app.slice'), (v2, 2))
        for bad, message in ((self.tmp, 'not a cgroup'), ('nope', 'no such cgroup')):
            with self.assertRaises(ValueError) as cm:
                resolve(bad)
            self.assertIn(message, str(cm.exception))

    def test_a_relative_cgroup_is_looked_up_in_the_hierarchy_not_the_cwd(self):
        v1 = os.path.join(self.tmp, 'fs', 'memory', 'svc')
        os.makedirs(v1)
        open(os.path.join(v1, 'memory.usage_in_bytes'), 'w').close()
        self.proc.write('self/mountinfo', ('31 20 0:27 / %s/fs/memory rw,relatime - cgroup '
                                           'cgroup rw,memory\n' % self.tmp).encode())
        decoy = os.path.join(self.tmp, 'cwd', 'svc')       # looks like a cgroup v2 directory
        os.makedirs(decoy)
        open(os.path.join(decoy, 'memory.current'), 'w').close()
        cwd = os.getcwd()
        os.chdir(os.path.dirname(decoy))
        self.addCleanup(os.chdir, cwd)
        self.assertEqual(bustd.resolve_cgroup('svc', self.proc.root, self.tmp), (v1, 1))

    def test_cli_bad_cgroup_is_exit_2(self):
        unreadable = os.path.join(self.tmp, 'cg-broken')
        os.makedirs(os.path.join(unreadable, 'memory.current'))   # there, but not a file
        os.makedirs(os.path.join(unreadable, 'memory.max'))
        for spec in (self.tmp, os.path.join(self.tmp, 'missing'), unreadable):
            with self.subTest(spec=spec):
                out = run_cli('-n', '--cgroup', spec, '--proc', self.proc.root)
                self.assertEqual(out.returncode, 2, out.stderr)
                self.assertEqual(len(out.stderr.strip().split('\n')), 1, out.stderr)
                self.assertIn('--cgroup', out.stderr)


def run_cli(*args, **kw):
    """Run bustd.py as a program; return the CompletedProcess (text)."""
    kw.setdefault('timeout', 60)
    return subprocess.run([sys.executable, BUSTD] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, **kw)


class TestCgroup(object):
    """A memory cgroup made by a test under its own cgroup; removed with all it holds."""

    def __init__(self, limit_mib):
        base, version, why = self.find_parent()
        if base is None:
            raise unittest.SkipTest('cannot create a memory cgroup here: ' + why)
        self.version = version
        self.path = tempfile.mkdtemp(prefix='bustd-test-', dir=base)
        limit_file = 'memory.max' if version == 2 else 'memory.limit_in_bytes'
        self.write(limit_file, str(limit_mib << 20))
        if version == 1 and os.path.exists(os.path.join(self.path, 'memory.memsw.limit_in_bytes')):
            self.write('memory.memsw.limit_in_bytes', str(limit_mib << 20))
        elif version == 2 and os.path.exists(os.path.join(self.path, 'memory.swap.max')):
            self.write('memory.swap.max', '0')

    @staticmethod
    def find_parent():
        if os.geteuid() != 0:
            return None, None, 'not root'
        with open('/proc/self/mountinfo') as f:
            mounts = bustd.parse_mountinfo_cgroups(f.read())
        with open('/proc/self/cgroup') as f:
            own = bustd.parse_proc_cgroup(f.read())
        why = 'no memory controller mounted'
        for key in ('v1', 'v2'):
            if key not in mounts or key not in own:
                continue
            mountpoint, root = mounts[key]
            inner = own[key][len(root):] if root != '/' and own[key].startswith(root) else own[key]
            base = os.path.normpath(mountpoint + '/' + inner.lstrip('/'))
            if key == 'v2':
                try:
                    with open(os.path.join(base, 'cgroup.subtree_control')) as f:
                        if 'memory' not in f.read().split():
                            why = 'cgroup v2 without the memory controller for children of ' + base
                            continue
                except OSError as exc:
                    why = str(exc)
                    continue
            if os.access(base, os.W_OK):
                return base, 1 if key == 'v1' else 2, ''
            why = '%s is not writable' % base
        return None, None, why

    def write(self, name, value):
        with open(os.path.join(self.path, name), 'w') as f:
            f.write(value)

    def read(self, name):
        with open(os.path.join(self.path, name)) as f:
            return f.read()

    def oom_kills(self):
        """The kernel's own count of OOM kills in this cgroup."""
        text = self.read('memory.events' if self.version == 2 else 'memory.oom_control')
        for line in text.split('\n'):
            if line.startswith('oom_kill '):
                return int(line.split()[1])
        return 0

    def pids(self):
        return [int(x) for x in self.read('cgroup.procs').split()]

    def join(self):
        """preexec_fn: move the new child into the cgroup before it allocates."""
        path = os.path.join(self.path, 'cgroup.procs')

        def join():
            with open(path, 'w') as f:
                f.write(str(os.getpid()))
        return join

    def remove(self):
        for _ in range(50):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:         # every process in here was started by the test
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.05)
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except OSError:
                time.sleep(0.05)


class KillCgroup(TestCgroup):
    """A cgroup made by a test (v2, or v1 memory) for kill tests; no memory limit needed."""

    def __init__(self, version):
        if os.geteuid() != 0:
            raise unittest.SkipTest('not root: cannot create a cgroup')
        with open('/proc/self/mountinfo') as f:
            mounts = bustd.parse_mountinfo_cgroups(f.read())
        with open('/proc/self/cgroup') as f:
            own = bustd.parse_proc_cgroup(f.read())
        key = 'v%d' % version
        if key not in mounts or key not in own:
            raise unittest.SkipTest('no cgroup %s hierarchy here' % key)
        base = bustd._cgroup_dir(mounts[key][0], mounts[key][1], own[key])
        try:
            self.path = tempfile.mkdtemp(prefix='bustd-test-', dir=base)
        except OSError as exc:
            raise unittest.SkipTest('cannot create a cgroup under %s: %s' % (base, exc))
        self.version = version


class KillCgroupTest(TempDirTest):
    """--kill-cgroup for real: a leader and its children in a test-made cgroup."""

    SERVICE = textwrap.dedent("""
        import ctypes, os, signal, sys, time
        with open('/proc/self/oom_score_adj', 'w') as f:
            f.write('1000')
        def fork_on_term(signum, frame):
            if os.fork() == 0:           # a member born after the scan
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                while True:
                    time.sleep(1)
            os._exit(0)
        kids = []
        ready_r, ready_w = os.pipe()
        for i in range(3):
            pid = os.fork()
            if pid == 0:
                if i == 0 and 'sshd' in sys.argv:
                    ctypes.CDLL(None).prctl(15, b'sshd', 0, 0, 0)   # PR_SET_NAME
                if i == 1 and 'forker' in sys.argv:
                    signal.signal(signal.SIGTERM, fork_on_term)
                os.write(ready_w, b'.')
                while True:
                    time.sleep(1)
            kids.append(pid)
        ready = b''
        while len(ready) < 3:
            ready += os.read(ready_r, 3)
        sys.stdout.write(' '.join(map(str, kids)) + '\\n')
        sys.stdout.flush()
        while True:
            time.sleep(1)
    """)

    def setUp(self):
        TempDirTest.setUp(self)
        # victim_cgroup() reads the mounts and bustd's own cgroup through --proc.
        for name in ('mountinfo', 'cgroup'):
            with open('/proc/self/' + name, 'rb') as f:
                self.proc.write('self/' + name, f.read())

    def start_service(self, cgroup, *args):
        leader = subprocess.Popen([sys.executable, '-c', self.SERVICE] + list(args),
                                  stdout=subprocess.PIPE, start_new_session=True,
                                  preexec_fn=cgroup.join())
        kids = [int(x) for x in leader.stdout.readline().split()]

        def cleanup():
            cgroup.remove()
            leader.wait()
            leader.stdout.close()
        self.addCleanup(cleanup)
        for pid in [leader.pid] + kids:
            self.proc.link(pid)
        return leader, kids

    def run_daemon(self, calls=None, **kw):
        log, sink = make_log(verbose=True)
        s = settings(self.proc, kill_cgroup=True, **kw)
        d = bustd.build_daemon(s, calls or bustd.load_kernel_calls(), log)
        d.start()
        d.step()
        return sink

    def wait_empty(self, cgroup, leader):
        reap(leader)
        deadline = time.monotonic() + 10
        while cgroup.pids() and time.monotonic() < deadline:
            time.sleep(0.02)
        return cgroup.pids()

    def kill_service(self, version, avail_kib, sig, calls=None):
        """Start a service in a new cgroup, let bustd act; check every member died, no one else."""
        cgroup = KillCgroup(version)
        leader, kids = self.start_service(cgroup)
        bystander = start_victim()      # oom_score_adj 1000 too; not in the tree nor the cgroup
        self.addCleanup(stop, bystander)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=avail_kib)
        sink = self.run_daemon(calls)
        self.assertEqual(self.wait_empty(cgroup, leader), [], sink.text())
        self.assertEqual(leader.returncode, -sig)
        self.assertIsNone(bystander.poll())
        self.assertIn('kill: %s cgroup="%s" pid=' % (bustd.SIGNAL_NAMES[sig], cgroup.path),
                      sink.text())
        self.assertIn('exited: pid=', sink.text())

    def test_v2_sigterm_reaches_every_member(self):
        self.kill_service(2, 700 * MIB, signal.SIGTERM)

    def test_members_forked_after_the_scan_are_killed_too(self):
        # The real /proc here (the fake tree cannot list a pid born during the
        # kill); the target is this test's cgroup, memory is not consulted.
        cgroup = KillCgroup(2)
        leader, kids = self.start_service(cgroup, 'forker')
        log, sink = make_log()
        s = settings('/proc', kill_cgroup=True)
        victim = bustd.read_process('/proc', leader.pid, os.sysconf('SC_PAGE_SIZE') // 1024)
        target, refusal = bustd.make_cgroup_target(victim, bustd.load_kernel_calls(), '/proc',
                                                   bustd.Policy(s))
        self.assertIsNone(refusal)
        self.assertEqual(sorted(m.pid for m in target.members), sorted([leader.pid] + kids))
        self.assertTrue(target.open())
        try:
            result = bustd.kill_and_wait(target, signal.SIGTERM, lambda: signal.SIGTERM, log)
        finally:
            target.close()
        self.assertTrue(result.exited, result.note)
        # 4 scanned + at least the one forked on SIGTERM (each further SIGTERM
        # that reaches the handler forks again: all of them are adopted too).
        self.assertGreaterEqual(len(target.members), 5)
        self.assertEqual(self.wait_empty(cgroup, leader), [])

    def test_v2_sigkill_goes_through_cgroup_kill(self):
        calls = bustd.load_kernel_calls()
        if calls.pidfd_send_signal is None:
            self.skipTest('no pidfds here')

        def refuse(fd, sig):
            raise OSError(errno.EPERM, 'refused by the test')
        calls.pidfd_send_signal = refuse   # only cgroup.kill can kill anything now
        self.kill_service(2, 300 * MIB, signal.SIGKILL, calls)

    def test_v1_sigkill_through_pidfds(self):
        self.kill_service(1, 300 * MIB, signal.SIGKILL)

    def test_a_protected_member_means_the_victim_dies_alone(self):
        cgroup = KillCgroup(2)
        leader, kids = self.start_service(cgroup, 'sshd')
        for pid in kids[1:]:           # only the leader and the "sshd" are candidates
            os.unlink(os.path.join(self.proc.root, str(pid)))
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        sink = self.run_daemon()
        self.assertEqual(reap(leader), -signal.SIGTERM)
        self.assertIn('--kill-cgroup: not killing cgroup %s: it holds %d sshd (default: sshd)'
                      % (cgroup.path, kids[0]), sink.text())
        self.assertEqual(sorted(cgroup.pids()), sorted(kids))    # every other member lives

    def test_more_members_than_free_fds_are_all_signalled(self):
        # A fork bomb's cgroup: one pidfd per member would fill bustd's fd
        # table, after which no /proc read works and the rest are never signalled.
        import resource
        cgroup = KillCgroup(2)
        leader = subprocess.Popen([sys.executable, '-c', textwrap.dedent('''
            import os, time
            with open('/proc/self/oom_score_adj', 'w') as f:
                f.write('1000')
            for i in range(60):
                if os.fork() == 0:
                    while True:
                        time.sleep(1)
            print('ready', flush=True)
            while True:
                time.sleep(1)
            ''')], stdout=subprocess.PIPE, preexec_fn=cgroup.join())

        def cleanup():
            cgroup.remove()
            leader.wait()
            leader.stdout.close()
        self.addCleanup(cleanup)
        self.assertEqual(leader.stdout.readline(), b'ready\n')
        self.assertEqual(len(cgroup.pids()), 61)
        log, sink = make_log()
        victim = bustd.read_process('/proc', leader.pid, os.sysconf('SC_PAGE_SIZE') // 1024)
        target, refusal = bustd.make_cgroup_target(
            victim, bustd.load_kernel_calls(), '/proc', bustd.Policy(settings('/proc')))
        self.assertIsNone(refusal)
        limits = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE,
                           (len(os.listdir('/proc/self/fd')) + 30, limits[1]))
        readable = []

        def check():
            readable.append(bustd.read_file('/proc/meminfo') is not None)
            return signal.SIGTERM
        try:
            self.assertTrue(target.open())
            try:
                result = bustd.kill_and_wait(target, signal.SIGTERM, check, log, wait_s=5)
            finally:
                target.close()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
        self.assertTrue(result.exited, result.note)
        self.assertNotIn(False, readable)
        self.assertEqual(self.wait_empty(cgroup, leader), [])
        self.assertEqual(leader.returncode, -signal.SIGTERM)

    def test_a_member_that_cannot_be_read_means_the_victim_dies_alone(self):
        # As under hidepid: listed in cgroup.procs, absent from bustd's /proc.
        # cgroup.kill would kill it unchecked (it might be a protected one).
        cgroup = KillCgroup(2)
        leader, kids = self.start_service(cgroup)
        os.unlink(os.path.join(self.proc.root, str(kids[0])))
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=300 * MIB)
        sink = self.run_daemon()
        self.assertEqual(reap(leader), -signal.SIGKILL)
        self.assertIn('--kill-cgroup: not killing cgroup %s: its member pid %d cannot be read'
                      % (cgroup.path, kids[0]), sink.text())
        self.assertEqual(sorted(cgroup.pids()), sorted(kids))    # every other member lives


HOG_CODE = textwrap.dedent(r"""
    import os, signal, sys, time
    args = sys.argv[1:]
    rate = float(args[args.index('--rate') + 1]) if '--rate' in args else 0
    if '--ignore-term' in args:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if '--fork' in args:
        for i in range(int(args[args.index('--fork') + 1])):
            if os.fork() == 0:
                break
    chunks, start = [], time.monotonic()
    while True:
        chunks.append(b'\x01' * (1 << 20))       # touches every page
        if rate:
            delay = start + len(chunks) / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
""")

INNOCENT_CODE = textwrap.dedent(r"""
    import sys, time
    keep = b'\x01' * (int(sys.argv[1]) << 20)
    sys.stdout.write('holding\n')
    sys.stdout.flush()
    while True:
        time.sleep(1)
""")


class Daemon(object):
    """bustd.py run as a program, its stderr collected line by line."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([sys.executable, BUSTD, '-n'] + list(args),
                                     stderr=subprocess.PIPE, universal_newlines=True)
        self.lines = []
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self.read)
        self.reader.daemon = True
        self.reader.start()
        if not self.ready.wait(30):
            self.stop()
            raise AssertionError('bustd never got ready:\n' + self.text())

    def read(self):
        for line in self.proc.stderr:
            self.lines.append(line.rstrip('\n'))
            if 'ready: watching' in line:
                self.ready.set()

    def text(self):
        return '\n'.join(self.lines)

    def wait_for(self, text, timeout=10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.text():
                return True
            time.sleep(0.05)
        return False

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.reader.join(5)
        self.proc.stderr.close()
        return code


class CgroupPressureTest(unittest.TestCase):
    """The real daemon against real memory exhaustion, inside a test-made 256 MiB cgroup.

    Checked against the kernel's own counters: the hog dies of bustd's
    signal and the cgroup's oom_kill count stays 0.
    """

    LIMIT_MIB = 256

    def setUp(self):
        try:
            self.cgroup = TestCgroup(self.LIMIT_MIB)
        except unittest.SkipTest as exc:
            sys.stderr.write('\n[skip] %s\n' % exc)
            raise
        self.addCleanup(self.cgroup.remove)

    def start(self, code, *args, **kw):
        child = subprocess.Popen([sys.executable, '-c', code] + [str(a) for a in args],
                                 preexec_fn=self.cgroup.join(), stdout=subprocess.PIPE, **kw)
        self.addCleanup(stop, child)
        return child

    def daemon(self, *args):
        d = Daemon('--cgroup', self.cgroup.path, *args)
        self.addCleanup(d.stop)
        return d

    def assert_killed_by_bustd(self, hog, d, signals=(signal.SIGTERM, signal.SIGKILL)):
        code = reap(hog, timeout=60)
        self.assertIn(-code, signals, 'hog exit status %s\n%s' % (code, d.text()))
        self.assertTrue(d.wait_for('exited: pid=%d' % hog.pid), d.text())
        self.assertRegex(d.text(), r'kill: SIG(TERM|KILL) (pgrp=\d+ )?pid=%d ' % hog.pid)
        self.assertEqual(self.cgroup.oom_kills(), 0, "the kernel's cgroup OOM killer fired")

    def test_full_speed_hog(self):
        d = self.daemon()
        self.assertIn('watching cgroup v%d %s' % (self.cgroup.version, self.cgroup.path), d.text())
        self.assert_killed_by_bustd(self.start(HOG_CODE), d)

    def test_slow_hog_gets_sigterm(self):
        d = self.daemon()
        hog = self.start(HOG_CODE, '--rate', 50)
        self.assert_killed_by_bustd(hog, d, signals=(signal.SIGTERM,))

    def test_innocent_survives(self):
        d = self.daemon()
        innocent = self.start(INNOCENT_CODE, 40)
        self.assertEqual(innocent.stdout.readline(), b'holding\n')
        self.assert_killed_by_bustd(self.start(HOG_CODE), d)
        self.assertIsNone(innocent.poll())
        self.assertEqual(d.stop(), 0)
        self.assertIsNone(innocent.poll())

    def test_hog_ignoring_sigterm_is_escalated(self):
        d = self.daemon()
        hog = self.start(HOG_CODE, '--rate', 200, '--ignore-term')
        self.assert_killed_by_bustd(hog, d, signals=(signal.SIGKILL,))
        self.assertIn('kill: SIGTERM pid=%d' % hog.pid, d.text())
        self.assertIn('escalating to SIGKILL: pid %d' % hog.pid, d.text())

    def test_forking_hog_is_killed_with_its_group(self):
        d = self.daemon('-g')
        hog = self.start(HOG_CODE, '--fork', 3, '--rate', 100, start_new_session=True)
        self.assert_killed_by_bustd(hog, d)
        self.assertIn('kill: SIGTERM pgrp=%d' % hog.pid, d.text())
        deadline = time.monotonic() + 10
        while self.cgroup.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.cgroup.pids(), [], 'members of the group survived')


# ----------------------------------------------------------------------------
# The command line as a black box
# ----------------------------------------------------------------------------

# The command line as a table: (exit status, text the one stderr line must hold,
# argv...).  Placeholders: FAKE a fake /proc (8 GiB, nothing low), PLAIN a
# non-executable file, DIR a directory, FIFO a named pipe, MISSING a path that
# does not exist, LINK a symlink to a file.  Status 2 cases run with --list
# --proc FAKE added, so an argument accepted by mistake starts no daemon; status
# 0 cases are --list runs that must print the table and nothing on stderr.
DEEP = '(' * 5000
CLI_CASES = [
    # thresholds
    (2, '-m/--mem-min', '-m', '120'),
    (2, '-m/--mem-min', '-m', 'abc'),
    (2, '-m/--mem-min: the SIGKILL level 10 is above', '-m', '5,10'),
    (2, "'10,' is not TERM or TERM,KILL", '-m', '10,'),
    (2, "',5' is not TERM or TERM,KILL", '-m', ',5'),
    (2, "'10,5,3' is not TERM or TERM,KILL", '-m', '10,5,3'),
    (2, '-m/--mem-min: empty value', '-m', ''),
    (2, '-m/--mem-min', '-m', '-5'),
    (2, '-m/--mem-min', '-m', 'nan'),
    (2, '-m/--mem-min', '-m', 'inf'),
    (2, '-m/--mem-min', '-m', '1e999'),
    (2, '-m/--mem-min', '-m', '%'),
    (2, '-m/--mem-min', '--mem-min=abc'),
    (2, '-m/--mem-min: empty value', '--mem-min='),
    (2, '-m/--mem-min: expected one argument', '-m'),
    (2, '-s/--swap-min', '-s', '200'),
    (2, '-s/--swap-min', '-s', '-1'),
    (2, '-s/--swap-min', '-s', ','),
    (2, '-s/--swap-min', '-s', '10,,5'),
    (2, '-M/--mem-min-size', '-M', '12X'),
    (2, "-M/--mem-min-size: '-1G'", '-M', '-1G'),
    (2, '-M/--mem-min-size: empty value', '-M', ''),
    (2, '-M/--mem-min-size: the SIGKILL level 2G is above', '-M', '1G,2G'),
    (2, '-M/--mem-min-size', '-M', 'inf'),
    (2, '-M/--mem-min-size', '-M', 'nan'),
    (2, '-M/--mem-min-size', '-M', '1e30'),
    (2, '-M/--mem-min-size', '-M', '10,5,1'),
    (2, '-M/--mem-min-size', '-M', 'G'),
    (2, '-S/--swap-min-size', '-S', '-1G'),
    (2, '-S/--swap-min-size', '-S', '1e999'),
    (2, '-S/--swap-min-size', '-S', '1Q'),
    (2, '-p/--psi', '-p', 'abc'),
    (2, '-p/--psi', '-p', '-1'),
    (2, '-p/--psi', '-p', '101'),
    (2, '-p/--psi: empty value', '-p', ''),
    (2, '--psi-mem-max', '--psi-mem-max', '101'),
    (2, '--psi-mem-max', '--psi-mem-max', 'off'),
    (2, '--psi-mem-max: empty value', '--psi-mem-max', ''),
    (2, '-m/-M', '-m', '100'),
    (2, '-m/-M', '-M', '100G'),
    (2, '--warn', '--warn', '5'),
    (2, '--warn', '--warn', '101'),
    (2, '--warn: empty value', '--warn', ''),
    (2, '--warn', '--warn', 'lots'),
    (2, '-r/--report-interval', '-r', '-1'),
    (2, '-r/--report-interval', '-r', 'often'),
    (2, '0 (off) to 999999999 seconds', '-r', 'inf'),
    (2, '0 (off) to 999999999 seconds', '-r', '1e9'),
    (2, '-r/--report-interval', '-r', 'nan'),
    (2, '-r/--report-interval: empty value', '-r', ''),
    # patterns
    (2, '--ignore: bad regular expression', '--ignore', '('),
    (2, '--ignore: empty value', '--ignore', ''),
    (2, '--ignore: empty value', '--ignore', ' '),
    (2, '--ignore: \'.*\' matches every process name', '--ignore', '.*'),
    (2, '--ignore: \'^\' matches every process name', '--ignore', '^'),
    (2, "--ignore: 'a|' matches every process name", '--ignore', 'a|'),
    (2, '--ignore: bad regular expression', '--ignore', 'a{99999999999}'),
    (2, '--ignore: bad regular expression', '--ignore', DEEP),
    (2, '--prefer: bad regular expression', '--prefer', '[a'),
    (2, '--prefer: bad regular expression', '--prefer', DEEP),
    (2, '--prefer: bad regular expression', '--prefer', 'a{99999999999}'),
    (2, '--prefer: bad regular expression', '--prefer', '(?P<a>x)(?P<a>y)'),
    (2, '--prefer: bad regular expression', '--prefer', '\\'),
    (2, '--prefer: bad regular expression', '--prefer', '(?<=a+)b'),
    (2, '--prefer: empty value', '--prefer', ''),
    (2, '--avoid: bad regular expression', '--avoid', '*x'),
    (2, '--avoid: bad regular expression', '--avoid', DEEP),
    (2, '--avoid: bad regular expression', '--avoid', 'a{99999999999}'),
    (2, '--avoid: empty value', '--avoid', ''),
    (2, "-u/--unkillables: '*' matches every process name", '-u', '*'),
    (2, "-u/--unkillables: '**' matches every process name", '-u', '**'),
    (2, "-u/--unkillables: '*?' matches every process name", '-u', '*?'),
    (2, "-u/--unkillables: '*' matches every process name", '-u', 'sshd|*'),
    (2, '-u/--unkillables: empty value', '-u', ''),
    (2, '-u/--unkillables', '-u', 'a||b'),
    (2, '-u/--unkillables', '-u', '|'),
    (2, '-u/--unkillables', '-u', 'sshd|'),
    (2, '--match', '--match', 'pid'),
    (2, '--match', '--match', ''),
    (2, '--match: expected one argument', '--match'),
    # templates and hooks
    (2, '--notify', '--notify-title', 'x'),
    (2, '--notify', '--notify-body', 'x'),
    (2, '--notify-body: unknown field {bogus}', '--notify', '--notify-body', 'killed {bogus}'),
    (2, '--notify-body: unknown field {pid.x}', '--notify', '--notify-body', '{pid.x}'),
    (2, '--notify-title: unknown field {pid[0]}', '--notify', '--notify-title', '{pid[0]}'),
    (2, '--notify-title: unknown field {name.__class__}', '--notify', '--notify-title',
     '{name.__class__}'),
    (2, '--notify-title: unknown field {}', '--notify', '--notify-title', '{}'),
    (2, '--notify-title: unknown field {0}', '--notify', '--notify-title', '{0}'),
    (2, '--notify-title: bad template', '--notify', '--notify-title', '{name!x}'),
    (2, '--notify-title: bad template', '--notify', '--notify-title', '{pid:Q}'),
    (2, '--notify-title: bad template', '--notify', '--notify-title', '{name:d}'),
    (2, '--notify-title: bad template', '--notify', '--notify-title', '{'),
    (2, '--notify-title: bad template', '--notify', '--notify-title', '}'),
    (2, '--notify-title: bad template', '--notify', '--notify-title', '{name'),
    (2, '--notify-title: bad template', '--notify', '--notify-title',
     '{name:{bogus}}'),
    (2, '--notify-title: empty value', '--notify', '--notify-title', ''),
    (2, '-N/--exec-after', '-N', 'relative/hook'),
    (2, '-N/--exec-after: empty value', '-N', ''),
    (2, '-P/--exec-before', '-P', 'MISSING'),
    (2, '-P/--exec-before', '-P', 'PLAIN'),
    (2, '-P/--exec-before', '-P', 'DIR'),
    # paths and modes
    (2, '--syslog', '--log-file', '/tmp/x.log', '--syslog'),
    (2, '--log-file: empty value', '--log-file', ''),
    (2, '--pidfile: empty value', '--pidfile', ''),
    (2, '--pidfile: expected one argument', '--pidfile'),
    (2, '--proc: empty value', '--proc', ''),
    (2, '--sys: empty value', '--sys', ''),
    (2, '--cgroup: empty value', '--cgroup', ''),
    (2, '--cgroup: \\xff: no such cgroup', '--cgroup', '\udcff'),
    (2, '--cgroup: MISSING: no such cgroup', '--cgroup', 'MISSING'),
    (2, '--cgroup: no-such.slice/x: no such cgroup', '--cgroup', 'no-such.slice/x'),
    (2, "--cgroup: found no memory cgroup of bustd's own", '--cgroup', 'auto'),
    (2, '--cgroup', '--cgroup', 'DIR'),
    (2, 'unrecognized arguments: --bogus', '--bogus'),
    (2, 'unrecognized arguments: foo', 'foo'),
    (2, 'unrecognized arguments: -- foo', '--', 'foo'),
    (2, 'ignored explicit argument', '--no-daemon=1'),
    (2, 'ignored explicit argument', '--list=yes'),
    (2, 'ignored explicit argument', '--ignore-root-user=1'),
    (2, "-n/--no-daemon: ignored explicit argument 'x'", '-nx'),
    # accepted
    (0, '', '-m', '15,8'),
    (0, '', '-m', '15'),
    (0, '', '-m', '10%'),
    (0, '', '-M', '512M'),
    (0, '', '-M', '1.5G,1G'),
    (0, '', '-m', '10', '-M', '1G'),
    (0, '', '-s', '100'),
    (0, '', '-S', '0'),
    (0, '', '-p', 'off'),
    (0, '', '-p', '40'),
    (0, '', '--psi-mem-max', '0'),
    (0, '', '-u', 'sshd|x*'),
    (0, '', '-u', '[!]]'),
    (0, '', '--ignore', '^sshd$'),
    (0, '', '--prefer', 'hog'),
    (0, '', '--prefer', '[[a]'),
    (0, '', '--avoid', 'x'),
    (0, '', '--match', 'cmdline'),
    (0, '', '--sort-by-rss', '-g', '--ignore-root-user', '--no-default-unkillables'),
    (0, '', '--notify', '--notify-title', '{pid:05d}'),
    (0, '', '--notify', '--notify-body', '{name!r} {rss:>10} {mem_percent}%'),
    (2, '--notify-body: bad template', '--notify', '--notify-body', '{pid:99999999999}'),
    (2, '--notify-title: bad template', '--notify', '--notify-title',
     '{mem_percent:.99999999999}'),
    (2, '--notify-body: bad template', '--notify', '--notify-body', '{pid:{uid}}'),
    (0, '', '--notify', '--notify-body', '{pid:0999} {name:.12} {rss:>10}'),
    # Megabytes built at each kill, and too long for notify-send's argv anyway.
    (2, '--notify-body: bad template', '--notify', '--notify-body', '{pid:999}' * 5000),
    (2, '--notify-title: bad template', '--notify', '--notify-title', '{name:900}' * 5),
    (0, '', '--notify', '--notify-title', '{name:900}' * 4),
    # {pid:c} formats 4242, but not a pid above 0x10FFFF (an error at every kill).
    (2, '--notify-body: bad template', '--notify', '--notify-body', '{pid:c}'),
    (2, '--notify-title: bad template', '--notify', '--notify-title', '{uid:c}'),
    (0, '', '--warn', '50'),
    (0, '', '-r', '60'),
    (0, '', '-r', '0'),
    (0, '', '--dry-run', '-V', '-n'),
    (0, '', '--tasks'),
    # the environment
    (1, 'cannot read MISSING/meminfo', '--list', '--proc', 'MISSING'),
    (1, 'cannot read PLAIN/meminfo', '--list', '--proc', 'PLAIN'),
    (1, '--pidfile DIR is a directory', '-n', '--pidfile', 'DIR', '--proc', 'FAKE'),
    (1, '--pidfile FIFO is not a regular file', '-n', '--pidfile', 'FIFO', '--proc', 'FAKE'),
    (1, '--pidfile LINK is a symbolic link', '-n', '--pidfile', 'LINK', '--proc', 'FAKE'),
    (1, 'cannot open the log file LINK (a symbolic link', '-n', '--log-file', 'LINK',
     '--proc', 'FAKE'),
    (1, '--pidfile MISSING/x.pid cannot be opened', '-n', '--pidfile', 'MISSING/x.pid',
     '--proc', 'FAKE'),
    (1, 'cannot open the log file FIFO (not a regular file)', '-n', '--log-file', 'FIFO',
     '--proc', 'FAKE'),
    (1, 'cannot open the log file DIR', '-n', '--log-file', 'DIR', '--proc', 'FAKE'),
    (1, 'cannot open the log file MISSING/x.log', '-n', '--log-file', 'MISSING/x.log',
     '--proc', 'FAKE'),
    (1, 'cannot open the log file FIFO (not a regular file)', '--log-file', 'FIFO',
     '--proc', 'FAKE'),
    (2, '--thrash', '--thrash', 'lots'),
    (2, '--thrash', '--thrash', '0'),
    (2, '--thrash', '--thrash', '30001'),
    (2, '--thrash', '--thrash', '1.5'),
    (2, '--thrash-horizon', '--thrash-horizon', '0'),
    (2, '--thrash-horizon', '--thrash-horizon', 'nan'),
    (2, '--thrash-horizon', '--thrash-horizon', 'inf'),
    (2, '--thrash', '--thrash', ''),
]


def run_cases(cases, run):
    """Run run(case) for every case, four at a time; return the results in order."""
    results = [None] * len(cases)

    def worker(indexes):
        for i in indexes:
            results[i] = run(cases[i])
    threads = [threading.Thread(target=worker, args=(range(k, len(cases), 4),))
               for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


class CliTest(TempDirTest):
    def placeholders(self):
        names = {'FAKE': self.proc.root, 'PLAIN': os.path.join(self.tmp, 'plain'),
                 'DIR': os.path.join(self.tmp, 'dir'), 'FIFO': os.path.join(self.tmp, 'fifo'),
                 'MISSING': os.path.join(self.tmp, 'missing'),
                 'LINK': os.path.join(self.tmp, 'link')}
        open(names['PLAIN'], 'w').close()
        os.mkdir(names['DIR'])
        os.mkfifo(names['FIFO'])
        os.symlink(names['PLAIN'], names['LINK'])
        return names

    def test_command_line_table(self):
        names = self.placeholders()
        self.assertGreaterEqual(len(CLI_CASES), 120)

        def fill(text):
            for name, path in names.items():
                text = text.replace(name, path)
            return text

        def run(case):
            status, text, argv = case[0], fill(case[1]), [fill(a) for a in case[2:]]
            if status != 1:
                argv += ['--list', '--proc', names['FAKE']]
            try:
                return run_cli(*argv, timeout=30)
            except subprocess.TimeoutExpired:
                return None
        for case, out in zip(CLI_CASES, run_cases(CLI_CASES, run)):
            with self.subTest(case=[a[:40] for a in case[2:]]):
                self.assertIsNotNone(out, 'timed out')
                self.assertNotIn('Traceback', out.stderr)
                self.assertEqual(out.returncode, case[0], out.stderr)
                if case[0] == 0:
                    self.assertEqual(out.stderr, '')
                    self.assertIn('OOM_SCORE', out.stdout)
                    continue
                lines = out.stderr.strip().split('\n')
                self.assertEqual(len(lines), 1, out.stderr)
                self.assertTrue(lines[0].startswith('bustd: '), lines[0])
                self.assertIn(fill(case[1]), lines[0])
                self.assertEqual(out.stdout, '')

    def test_a_closed_stdout_is_an_output_error(self):
        for args in (['--list', '--proc', self.proc.root], ['--help'], ['--version']):
            with self.subTest(args=args):
                out = subprocess.run(['sh', '-c', 'exec "$@" >&-', 'sh', sys.executable, BUSTD]
                                     + args, stderr=subprocess.PIPE, universal_newlines=True,
                                     timeout=30)
                self.assertEqual((out.returncode, out.stderr), (
                    1, 'bustd: cannot write to stdout: Bad file descriptor\n'))

    def test_levels_are_checked_against_the_real_total(self):
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=6 * GIB)
        ok = run_cli('--list', '-M', '1G', '--warn', '15', '--proc', self.proc.root)
        self.assertEqual(ok.returncode, 0, ok.stderr)          # 1 GiB is 12.5 % < 15 %
        bad = run_cli('--list', '-M', '2G', '--warn', '15', '--proc', self.proc.root)
        self.assertEqual(bad.returncode, 2)
        self.assertIn('--warn: 15% is not above the SIGTERM level 2.0 GiB', bad.stderr)
        bad = run_cli('--list', '-M', '9G', '--proc', self.proc.root)
        self.assertEqual(bad.returncode, 2)
        self.assertIn('not below the 8.0 GiB of memory there is', bad.stderr)

    def test_relative_paths_become_absolute(self):
        s = bustd.parse_settings(['--proc', 'fake', '--sys', 'fakesys', '--pidfile', 'p'])
        self.assertEqual((s.proc, s.sys_fs, s.pidfile), tuple(
            os.path.join(os.getcwd(), x) for x in ('fake', 'fakesys', 'p')))

    def test_proc_of_another_pid_namespace_is_refused(self):
        os.symlink('1', os.path.join(self.proc.root, 'self'))
        with self.assertRaises(bustd.EnvironmentProblem) as cm:
            bustd.check_pid_namespace(self.proc.root)
        self.assertIn('another PID namespace', str(cm.exception))
        bustd.check_pid_namespace('/proc')                     # ours: fine
        out = run_cli('--list', '--proc', self.proc.root)
        self.assertEqual(out.returncode, 1)
        self.assertIn('another PID namespace', out.stderr)

    def test_messages_say_how_to_fix(self):
        self.assertIn('e.g.', run_cli('-m', '5,10').stderr)
        self.assertIn('512M', run_cli('-M', 'lots').stderr)
        self.assertIn('{name}', run_cli('--notify', '--notify-body', '{x}').stderr)

    def test_help_is_a_manual(self):
        out = run_cli('--help')
        self.assertEqual(out.returncode, 0)
        for section in ('NAME', 'SYNOPSIS', 'DESCRIPTION', 'THRESHOLDS', 'EXAMPLES', 'SIGNALS',
                        'EXIT STATUS', 'PROTECTED BY DEFAULT', 'LOGS'):
            self.assertIn('\n' + section, out.stdout)
        for flag in ('--mem-min', '--swap-min', '--mem-min-size', '--swap-min-size', '--psi',
                     '--psi-mem-max', '--cgroup', '--unkillables', '--ignore', '--ignore-root-user',
                     '--no-default-unkillables', '--prefer', '--avoid', '--match', '--sort-by-rss',
                     '--kill-pgroup', '--list', '--tasks', '--notify', '--notify-title',
                     '--notify-body', '--warn', '--exec-after', '--exec-before', '--no-daemon',
                     '--pidfile', '--log-file', '--syslog', '--verbose', '--report-interval',
                     '--dry-run', '--version'):
            self.assertIn(flag, out.stdout)

    def test_every_option_is_in_the_readme_and_the_manual(self):
        with open(os.path.join(HERE, 'README.md')) as f:
            readme = f.read()
        options_table = readme[readme.index('\n## Options\n'):readme.index('\n## Who gets')]
        manual = run_cli('--help').stdout
        for action in bustd.build_parser()._actions:
            for flag in action.option_strings:
                with self.subTest(flag=flag):
                    self.assertIn(flag, manual)
                    self.assertRegex(options_table, r'\| `[^|]*%s\b' % re.escape(flag))

    def test_version(self):
        out = run_cli('--version')
        self.assertEqual((out.returncode, out.stdout.strip()), (0, 'bustd ' + bustd.__version__))

    def test_runs_without_cap_kill_and_cap_ipc_lock(self):
        """As an ordinary user would: it warns once per missing power and runs."""
        setpriv = shutil.which('setpriv')
        if setpriv is None or os.geteuid() != 0:
            self.skipTest('needs root and setpriv (util-linux) to drop capabilities')
        path = os.path.join(self.tmp, 'stderr')
        d = popen_logging_to(path, [setpriv, '--bounding-set', '-kill,-ipc_lock', '--inh-caps',
                                    '-kill,-ipc_lock', '--', sys.executable, BUSTD, '-n',
                                    '--proc', self.proc.root])
        self.addCleanup(stop, d)
        wait_until(lambda: 'ready: watching' in read_text(path) or d.poll() is not None, 30)
        code, err = stop_and_read(d, path)
        self.assertEqual(code, 0, err)
        self.assertEqual(err.count('no CAP_KILL (not root?): only processes of uid 0 can be '
                                   'killed'), 1)
        self.assertEqual(err.count('not locking memory (no CAP_IPC_LOCK)'), 1)
        self.assertIn('ready: watching', err)
        self.assertNotIn('Traceback', err)

    def test_policy_without_cap_kill_skips_other_users(self):
        self.proc.add(10, oom_score=900, uid=1000)
        self.proc.add(11, oom_score=100, uid=0)
        s = settings(self.proc)
        victim, _ = bustd.pick_victim(bustd.scan_processes(s.proc, bustd.Policy(s, only_uid=0)))
        self.assertEqual(victim.pid, 11)

    def test_no_proc_is_exit_1(self):
        out = run_cli('-n', '--proc', os.path.join(self.tmp, 'none'))
        self.assertEqual(out.returncode, 1)
        self.assertEqual(len(out.stderr.strip().split('\n')), 1, out.stderr)
        self.assertIn('cannot read %s/none/meminfo' % self.tmp, out.stderr)

    def test_list_on_a_fake_tree(self):
        self.proc.add(10, name='sshd', oom_score=900)
        self.proc.add(11, name='hog', oom_score=800, rss_pages=1 << 20)
        out = run_cli('--list', '--proc', self.proc.root)
        self.assertEqual(out.returncode, 0, out.stderr)
        lines = out.stdout.strip().split('\n')
        self.assertIn('OOM_SCORE', lines[0])
        self.assertIn('protected: default: sshd', lines[1])
        self.assertIn('<- victim', lines[2])
        self.assertIn('4.0 GiB', lines[2])

    def test_list_on_this_machine(self):
        out = run_cli('--tasks')
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn('PID', out.stdout)
        rows = out.stdout.strip().split('\n')[1:]
        pids = [int(r.split()[0]) for r in rows if r.strip()[:1].isdigit()]
        self.assertIn(os.getpid(), pids)          # this test runner is a candidate

    def test_dry_run_names_the_victim_and_sends_nothing(self):
        self.proc.add(10, name='sshd', oom_score=900)
        self.proc.add(11, name='hog', oom_score=800)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=4 * GIB)
        d = Daemon('--dry-run', '-m', '99', '-V', '--proc', self.proc.root)
        self.addCleanup(d.stop)
        self.assertTrue(d.wait_for('dry run, no signal sent: kill: SIGTERM pid=11 '), d.text())
        self.assertTrue(d.wait_for('chose pid 11 because: highest oom_score 800; skipped '
                                   'protected: 10 sshd (default: sshd)'), d.text())
        self.assertEqual(d.stop(), 0)
        self.assertIn('DRY RUN', d.text())
        self.assertIn('SIGTERM received: exiting', d.text())

    def test_runs_on_this_machine_and_stops_on_sigterm_and_sigint(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            with self.subTest(signal=sig):
                d = Daemon()
                self.addCleanup(d.stop)
                text = d.text()
                for expected in ('watching the whole machine', 'SIGTERM when available memory <= 10.0%',
                                 'SIGKILL when available memory <= 5.0%', 'PSI rule:',
                                 'polling: adaptive 10..3000 ms', 'kernel features:',
                                 'protected: default: init systemd'):
                    self.assertIn(expected, text)
                start = time.monotonic()
                d.proc.send_signal(sig)
                self.assertEqual(d.stop(), 0)
                self.assertLess(time.monotonic() - start, 5)
                self.assertIn('received: exiting after 0 kill(s)', d.text())

    def test_unit_and_defaults_use_only_real_flags(self):
        help_text = run_cli('--help').stdout
        texts = []
        for name in ('bustd.service', os.path.join('etc', 'default', 'bustd')):
            with open(os.path.join(HERE, name)) as f:
                texts.append(f.read())
        import re
        flags = set(re.findall(r'(?<![\w-])(--[a-z][a-z-]+|-[a-zA-Z])(?=[\s=\'"]|$)',
                               texts[0].split('ExecStart=')[1].split('\n')[0] + '\n' +
                               '\n'.join(l for l in texts[1].split('\n')
                                         if 'BUSTD_ARGS' in l)))
        self.assertIn('--no-daemon', flags)
        for flag in flags:
            self.assertRegex(help_text, r'(?<![\w-])%s\b' % re.escape(flag), flag)


# ----------------------------------------------------------------------------
# Daemon manners
# ----------------------------------------------------------------------------

def read_text(path):
    """The text of a file, or '' if it does not exist (yet)."""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ''


def popen_logging_to(path, argv, **popen):
    """Popen argv with its stderr in the file at path, so a test can wait for a line."""
    with open(path, 'w') as err:
        return subprocess.Popen(argv, stderr=err, **popen)


def stop_and_read(d, path):
    """SIGTERM a daemon started by popen_logging_to; its exit code and its whole stderr."""
    d.terminate()
    return d.wait(30), read_text(path)


def wait_until(predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def alive(pid):
    try:
        with open('/proc/%d/stat' % pid, 'rb') as f:
            return bustd.parse_stat(f.read()).state not in ('Z', 'X')
    except OSError:
        return False


class DaemonizeTest(TempDirTest):
    def test_daemonizes_with_pidfile_and_log_file(self):
        pidfile = os.path.join(self.tmp, 'bustd.pid')
        logfile = os.path.join(self.tmp, 'bustd.log')
        out = run_cli('--pidfile', pidfile, '--log-file', logfile, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertTrue(os.path.exists(pidfile))
        with open(pidfile) as f:
            pid = int(f.read())
        self.addCleanup(lambda: alive(pid) and os.kill(pid, signal.SIGKILL))
        self.assertEqual(out.stdout.strip(), 'bustd: running as pid %d, logging to %s'
                         % (pid, logfile))
        self.assertTrue(alive(pid))
        with open('/proc/%d/stat' % pid, 'rb') as f:
            st = bustd.parse_stat(f.read())
        self.assertNotEqual(st.ppid, os.getpid())
        self.assertNotEqual(st.session, os.getsid(0))     # setsid: a session of its own,
        self.assertNotEqual(st.session, pid)              # not its leader: no tty can attach
        self.assertEqual(os.readlink('/proc/%d/cwd' % pid), '/')
        self.assertEqual(os.readlink('/proc/%d/fd/0' % pid), '/dev/null')
        self.assertEqual(os.readlink('/proc/%d/fd/2' % pid), '/dev/null')
        with open('/proc/%d/status' % pid) as f:
            self.assertIn('Umask:\t0022', f.read())
        self.assertTrue(wait_until(lambda: 'ready: watching' in read_text(logfile)))
        # A second one refuses the live pidfile.
        again = run_cli('--pidfile', pidfile, '--log-file', logfile)
        self.assertEqual(again.returncode, 1)
        self.assertIn('is locked by a running bustd (pid %d)' % pid, again.stderr)
        os.kill(pid, signal.SIGTERM)
        self.assertTrue(wait_until(lambda: not alive(pid)))
        self.assertFalse(os.path.exists(pidfile))
        self.assertIn('SIGTERM received: exiting', read_text(logfile))

    def test_stale_pidfile_is_replaced(self):
        pidfile = os.path.join(self.tmp, 'bustd.pid')
        with open(pidfile, 'w') as f:
            f.write('999999999\n')
        d = Daemon('--pidfile', pidfile)
        self.addCleanup(d.stop)
        with open(pidfile) as f:
            self.assertEqual(int(f.read()), d.proc.pid)
        self.assertEqual(d.stop(), 0)
        self.assertFalse(os.path.exists(pidfile))

    def test_unwritable_log_file_is_exit_1(self):
        out = run_cli('--log-file', os.path.join(self.tmp, 'no', 'such', 'dir.log'))
        self.assertEqual(out.returncode, 1)
        self.assertIn('cannot open the log file', out.stderr)


class ServiceManagerTest(TempDirTest):
    def notify_socket(self, abstract=False):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        if abstract:
            name = 'bustd-test-%d' % os.getpid()
            sock.bind('\0' + name)
            address = '@' + name
        else:
            address = os.path.join(self.tmp, 'notify.sock')
            sock.bind(address)
        sock.settimeout(20)
        return sock, address

    def test_ready_status_and_watchdog(self):
        for abstract in (False, True):
            with self.subTest(abstract=abstract):
                sock, address = self.notify_socket(abstract)
                env = dict(os.environ, NOTIFY_SOCKET=address, WATCHDOG_USEC='400000')
                d = subprocess.Popen([sys.executable, BUSTD, '-n'], env=env,
                                     stderr=subprocess.DEVNULL)
                self.addCleanup(stop, d)
                first = sock.recv(4096).decode()
                self.assertIn('READY=1', first)
                self.assertIn('STATUS=watching: SIGTERM at mem <=', first)
                self.assertIn('MAINPID=%d' % d.pid, first)
                pings = [sock.recv(4096).decode() for _ in range(3)]
                self.assertEqual(pings, ['WATCHDOG=1'] * 3)
                d.terminate()
                self.assertEqual(d.wait(10), 0)

    def test_no_socket_no_fuss(self):
        sm = bustd.ServiceManager({})
        self.assertFalse(sm.notify('READY=1'))
        sm.ping()
        self.assertEqual(sm.max_sleep_s(), bustd.POLL_CEILING_S)

    def test_watchdog_for_another_pid_is_ignored(self):
        sm = bustd.ServiceManager({'WATCHDOG_USEC': '1000000', 'WATCHDOG_PID': '1'})
        self.assertIsNone(sm.watchdog_s)
        sm = bustd.ServiceManager({'WATCHDOG_USEC': '1000000', 'WATCHDOG_PID': str(os.getpid())})
        self.assertEqual(sm.watchdog_s, 1.0)
        self.assertEqual(sm.max_sleep_s(), 0.25)


class LoggingTest(TempDirTest):
    def run_with_stderr_file(self, journal):
        path = os.path.join(self.tmp, 'stderr')
        with open(path, 'w') as err:
            st = os.fstat(err.fileno())
            env = dict(os.environ)
            env.pop('JOURNAL_STREAM', None)
            if journal:
                env['JOURNAL_STREAM'] = '%d:%d' % (st.st_dev, st.st_ino)
            d = subprocess.Popen([sys.executable, BUSTD, '-n', '--proc', self.proc.root],
                                 env=env, stderr=err)
            self.addCleanup(stop, d)
            wait_until(lambda: 'ready: watching' in read_text(path))
            d.terminate()
            self.assertEqual(d.wait(10), 0)
        with open(path) as f:
            return f.read().split('\n')

    def test_journal_prefixes_when_stderr_is_the_journal(self):
        lines = [l for l in self.run_with_stderr_file(journal=True) if l]
        self.assertTrue(all(l[:3] in ('<3>', '<4>', '<6>', '<7>') for l in lines), lines)
        self.assertTrue(any(l.startswith('<6>ready: watching') for l in lines), lines)
        self.assertTrue(any(l.startswith('<4>') for l in lines), lines)   # e.g. no oom_score_adj

    def test_plain_prefixes_on_a_terminal_or_file(self):
        lines = [l for l in self.run_with_stderr_file(journal=False) if l]
        self.assertIn('bustd: ready: watching (SIGUSR1 logs a status, SIGTERM stops)', lines)
        self.assertTrue(any(l.startswith('bustd: warning: ') for l in lines), lines)
        self.assertTrue(all(l.startswith('bustd: ') for l in lines), lines)
        self.assertFalse(any(l.startswith('<') for l in lines))

    def test_journal_stream_of_another_file_is_not_the_journal(self):
        self.assertFalse(bustd.is_journal_stream(2, {'JOURNAL_STREAM': '1:1'}))
        self.assertFalse(bustd.is_journal_stream(2, {'JOURNAL_STREAM': 'junk'}))

    def test_sighup_reopens_a_moved_log_file_and_sigusr1_logs_a_status(self):
        logfile = os.path.join(self.tmp, 'bustd.log')
        self.proc.add(11, name='hog', oom_score=800)
        d = subprocess.Popen([sys.executable, BUSTD, '-n', '--log-file', logfile,
                              '--proc', self.proc.root])
        self.addCleanup(stop, d)
        self.assertTrue(wait_until(lambda: os.path.exists(logfile) and
                                   'ready: watching' in read_text(logfile)))
        os.rename(logfile, logfile + '.1')
        d.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: os.path.exists(logfile)))
        d.send_signal(signal.SIGUSR1)
        self.assertTrue(wait_until(lambda: 'status: ' in read_text(logfile)))
        d.terminate()
        self.assertEqual(d.wait(10), 0)
        new = read_text(logfile)
        self.assertIn('SIGHUP: reopened the log (%s)' % logfile, new)
        self.assertIn('status: mem avail: 6.0 GiB of 8.0 GiB (75.0%)', new)
        self.assertIn('status: kills so far: 0', new)
        self.assertRegex(new, r'status: +11 \S+ +hog +800 .*<- victim')
        self.assertNotIn('status:', read_text(logfile + '.1'))
        self.assertRegex(new.split('\n')[0], r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d bustd\[%d\]: '
                         % d.pid)

    def test_syslog_sink_writes_rfc3164_datagrams(self):
        path = os.path.join(self.tmp, 'log.sock')
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        self.addCleanup(sock.close)
        sink = bustd.SyslogSink(path)
        self.addCleanup(sink.reopen)
        self.assertTrue(sink.write(4, 'kill: SIGTERM pid=1'))
        self.assertEqual(sock.recv(4096).decode(),
                         '<28>bustd[%d]: kill: SIGTERM pid=1' % os.getpid())
        # syslogd restarts: its socket goes away, then a new one takes the path.
        sock.close()
        os.unlink(path)
        self.assertFalse(sink.write(6, 'lost: nobody listens'))   # never raises or blocks
        self.assertEqual(sink.error, 'No such file or directory')
        again = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        again.bind(path)
        self.addCleanup(again.close)
        self.assertTrue(sink.write(6, 'back'))
        self.assertEqual(again.recv(4096).decode(), '<30>bustd[%d]: back' % os.getpid())


class NoCtypesTest(TempDirTest):
    def test_decides_and_kills_without_ctypes(self):
        child = start_victim()
        self.addCleanup(stop, child)
        self.proc.link(child.pid)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        shim = ("import sys; sys.modules['ctypes'] = None; p = sys.argv[1]; "
                "g = {'__name__': 'bustd_noctypes', '__file__': p}; "
                "exec(compile(open(p).read(), p, 'exec'), g); "
                "sys.exit(g['main'](sys.argv[2:]))")
        path = os.path.join(self.tmp, 'stderr')
        d = popen_logging_to(path, [sys.executable, '-c', shim, BUSTD, '-n', '--proc',
                                    self.proc.root])
        self.addCleanup(stop, d)
        wait_until(lambda: child.poll() is not None or d.poll() is not None, 30)
        self.assertEqual(child.poll(), -signal.SIGTERM, d.poll())
        # Without pidfd, bustd learns of the death at its next check: wait for
        # that line, since SIGTERM (rightly) cuts a kill wait short.
        wait_until(lambda: 'exited: pid=%d' % child.pid in read_text(path) or
                   d.poll() is not None, 30)
        code, err = stop_and_read(d, path)
        self.assertEqual(code, 0, err)
        self.assertIn('running without ctypes (no sysinfo, mlockall, process_mrelease)', err)
        self.assertIn('kill: SIGTERM pid=%d' % child.pid, err)
        self.assertIn('exited: pid=%d' % child.pid, err)
        self.assertEqual(err.count('ctypes (no sysinfo'), 1)      # one warning


# ----------------------------------------------------------------------------
# Notifications and hooks: fake buses, fake notify-send, fake hooks
# ----------------------------------------------------------------------------

RECORDER = """#!/bin/sh
# Records how it was called, for the test that wrote it.
PATH=/usr/bin:/bin; export PATH
out="%(out)s/$(basename "$0").$$"
{
  echo "uid=$(id -u) gid=$(id -g)"
  echo "bus=$DBUS_SESSION_BUS_ADDRESS"
  env | grep '^BUSTD_' | sort
  for a in "$@"; do echo "arg=$a"; done
} > "$out.tmp" && mv "$out.tmp" "$out"
echo "said hello on stdout"
%(tail)s
"""


class HelpersTest(TempDirTest):
    def setUp(self):
        TempDirTest.setUp(self)
        os.chmod(self.tmp, 0o755)      # helpers may run as another user
        self.bin = os.path.join(self.tmp, 'bin')
        self.out = os.path.join(self.tmp, 'out')
        os.makedirs(self.bin)
        os.makedirs(self.out)
        os.chmod(self.out, 0o777)
        self.run_root = os.path.join(self.tmp, 'run')
        self.log, self.sink = make_log()

    def script(self, name, tail='exit 0'):
        path = os.path.join(self.bin, name)
        with open(path, 'w') as f:
            f.write(RECORDER % {'out': self.out, 'tail': tail})
        os.chmod(path, 0o755)
        return path

    def records(self, name):
        found = []
        for entry in sorted(os.listdir(self.out)):
            if entry.startswith(name + '.') and not entry.endswith('.tmp'):
                with open(os.path.join(self.out, entry)) as f:
                    found.append(f.read().split('\n'))
        return found

    def bus(self, uid, real=True):
        d = os.path.join(self.run_root, 'user', str(uid))
        os.makedirs(d)
        path = os.path.join(d, 'bus')
        if real:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(path)
            self.addCleanup(sock.close)
        else:
            open(path, 'w').close()
        return path

    def notifier(self, **kw):
        kw.setdefault('run_root', self.run_root)
        s = bustd.Settings(**kw)
        helpers = bustd.Helpers(self.log)
        env = {'PATH': self.bin}
        return bustd.Notifier(s, helpers, self.log, environ=env), helpers

    def finish(self, helpers, timeout=10):
        self.assertTrue(wait_until(lambda: helpers.poll() or not helpers.running, timeout))

    def victim_fields(self):
        p = make_process(4242, name='firefox', uid=1000, rss_kib=3 * GIB + 200 * MIB)
        p.cmdline = 'firefox -P work'
        return bustd.victim_fields(p, signal.SIGTERM, reading(8 * GIB, 330 * MIB),
                                   lambda uid: 'alice')

    def assert_no_zombie_children(self):
        for pid in bustd.iter_pids('/proc'):
            st = bustd.parse_stat(bustd.read_small('/proc/%d/stat' % pid) or b'')
            if st and st.ppid == os.getpid():
                self.assertNotIn(st.state, ('Z',), 'zombie child %d %s' % (pid, st.name))

    def test_session_buses(self):
        alice = self.bus(1000)
        self.bus(1001, real=False)                  # not a socket
        os.makedirs(os.path.join(self.run_root, 'user', 'abc'))
        self.assertEqual(bustd.session_buses(self.run_root), [(1000, alice)])
        self.assertEqual(bustd.session_buses(os.path.join(self.tmp, 'none')), [])

    def test_notify_send_runs_as_each_user_with_their_bus(self):
        self.script('notify-send')
        alice = self.bus(1000)
        bob = self.bus(1001)
        notifier, helpers = self.notifier(notify=True)
        notifier.after_kill(self.victim_fields())
        self.finish(helpers)
        records = self.records('notify-send')
        self.assertEqual(len(records), 2)
        users = sorted((r[0], r[1]) for r in records)
        self.assertEqual(users, [('uid=1000 gid=1000', 'bus=unix:path=' + alice),
                                 ('uid=1001 gid=1001', 'bus=unix:path=' + bob)])
        args = records[0]
        self.assertIn('arg=bustd: low memory', args)
        self.assertIn('arg=bustd: killed firefox (pid 4242) to free 3.2 GiB; memory was at 4.0%',
                      args)
        self.assertIn('notify 1000 (pid', self.sink.text())
        self.assertIn('output: said hello on stdout', self.sink.text())
        self.assert_no_zombie_children()

    def test_custom_templates(self):
        self.script('notify-send')
        self.bus(1000)
        notifier, helpers = self.notifier(notify=True, notify_title='{user}: {name} got {signal}',
                                          notify_body='{rss} {uid} {cmdline} {mem_percent}')
        notifier.after_kill(self.victim_fields())
        self.finish(helpers)
        args = self.records('notify-send')[0]
        self.assertIn('arg=alice: firefox got SIGTERM', args)
        self.assertIn('arg=3.2 GiB 1000 firefox -P work 4.0', args)

    def test_falls_back_to_gdbus_then_dbus_send(self):
        self.bus(1000)
        self.script('dbus-send')
        notifier, helpers = self.notifier(notify=True)
        self.assertTrue(notifier.program.endswith('dbus-send'))
        self.script('gdbus')
        notifier, helpers = self.notifier(notify=True)
        self.assertTrue(notifier.program.endswith('gdbus'))
        notifier.after_kill(self.victim_fields())
        self.finish(helpers)
        args = self.records('gdbus')[0]
        self.assertIn('arg=org.freedesktop.Notifications.Notify', args)
        self.assertIn('arg=--session', args)

    def test_no_notifier_is_one_warning(self):
        self.bus(1000)
        notifier, helpers = self.notifier(notify=True)
        self.assertIsNone(notifier.program)
        self.assertEqual(self.sink.text().count('desktop notifications are off'), 1)
        notifier.after_kill(self.victim_fields())
        self.assertEqual(helpers.running, {})

    def test_after_hook_gets_the_facts(self):
        hook = self.script('after-hook')
        notifier, helpers = self.notifier(exec_after=hook)
        notifier.after_kill(self.victim_fields())
        self.finish(helpers)
        record = self.records('after-hook')[0]
        for line in ('BUSTD_PID=4242', 'BUSTD_NAME=firefox', 'BUSTD_UID=1000',
                     'BUSTD_CMDLINE=firefox -P work', 'BUSTD_RSS_KIB=%d' % (3 * GIB + 200 * MIB),
                     'BUSTD_SIGNAL=SIGTERM', 'BUSTD_MEM_AVAILABLE_PERCENT=4.0'):
            self.assertIn(line, record)
        self.assertIn('-N hook (pid', self.sink.text())
        self.assertIn(': exit 0', self.sink.text())

    def test_failing_hook_costs_one_log_line(self):
        hook = self.script('after-hook', tail='exit 3')
        notifier, helpers = self.notifier(exec_after=hook)
        notifier.after_kill(self.victim_fields())
        self.finish(helpers)
        self.assertEqual(self.sink.text().count('exit 3'), 1)

    def test_hanging_helper_is_killed_after_its_timeout_and_reaped(self):
        hook = self.script('after-hook', tail='exec sleep 1000')
        helpers = bustd.Helpers(self.log, timeout_s=0.3)
        pids = helpers.start_batch([bustd.Command([hook], {'PATH': '/usr/bin:/bin'}, 'hook')])
        self.assertEqual(len(pids), 1)
        self.assertTrue(alive(pids[0]))
        self.finish(helpers, timeout=5)
        self.assertFalse(os.path.exists('/proc/%d' % pids[0]))      # killed and reaped
        self.assertIn('killed after its 0.3 s timeout', self.sink.text())
        self.assert_no_zombie_children()

    def test_a_helper_that_cannot_die_does_not_block_the_loop(self):
        """Like one in uninterruptible sleep: frozen (cgroup v1 freezer), SIGKILL waits."""
        freezer = '/sys/fs/cgroup/freezer'
        if os.geteuid() != 0 or not os.path.exists(freezer + '/cgroup.procs'):
            self.skipTest('needs root and the cgroup v1 freezer to hold a process unkillable')
        cg = tempfile.mkdtemp(prefix='bustd-test-', dir=freezer)
        def thaw_and_remove():
            with open(cg + '/freezer.state', 'w') as f:
                f.write('THAWED')
            wait_until(lambda: not read_text(cg + '/cgroup.procs'))
            os.rmdir(cg)
        self.addCleanup(thaw_and_remove)
        hook = self.script('after-hook', tail='exec sleep 1000')
        helpers = bustd.Helpers(self.log, timeout_s=5)
        pid = helpers.start_batch([bustd.Command([hook], {}, 'frozen')])[0]
        with open(cg + '/cgroup.procs', 'w') as f:
            f.write(str(pid))
        with open(cg + '/freezer.state', 'w') as f:
            f.write('FROZEN')
        self.assertTrue(wait_until(lambda: 'FROZEN' in read_text(cg + '/freezer.state')))
        helpers.kill([pid])                  # returns although it cannot die yet
        self.assertIn(pid, helpers.running)
        self.assertTrue(alive(pid))
        with open(cg + '/freezer.state', 'w') as f:
            f.write('THAWED')
        self.finish(helpers)                         # reaped on a later poll
        self.assertFalse(os.path.exists('/proc/%d' % pid))
        self.assertIn('frozen (pid %d): killed after its 5.0 s timeout' % pid, self.sink.text())

    def test_failed_fork_leaks_no_fd(self):
        from unittest import mock
        helpers = bustd.Helpers(self.log)
        before = len(os.listdir('/proc/self/fd'))
        with mock.patch.object(bustd.os, 'fork', side_effect=OSError(errno.EAGAIN, 'no')):
            for _ in range(20):
                self.assertEqual(helpers.start_batch([bustd.Command(['/bin/true'], {}, 'x')]),
                                 [])
        self.assertEqual(len(os.listdir('/proc/self/fd')), before)
        self.assertIn('cannot start x: no', self.sink.text())

    def test_one_batch_at_a_time(self):
        hook = self.script('after-hook', tail='exec sleep 1000')
        helpers = bustd.Helpers(self.log, timeout_s=5)
        first = helpers.start_batch([bustd.Command([hook], {}, 'first')])
        second = helpers.start_batch([bustd.Command([hook], {}, 'second')])
        self.assertEqual(len(first), 1)
        self.assertEqual(second, [])
        self.assertIn('helpers still running (first): not starting second', self.sink.text())
        helpers.kill(first)
        self.assertEqual(helpers.running, {})

    def test_missing_program_costs_one_log_line(self):
        helpers = bustd.Helpers(self.log)
        helpers.start_batch([bustd.Command(['/nonexistent/prog'], {}, 'ghost')])
        self.finish(helpers)
        self.assertIn('ghost (pid', self.sink.text())
        self.assertIn('exit 127', self.sink.text())

    def test_before_hook_budget(self):
        cases = [('exit 0', False), ('exec sleep 1000', True)]
        for tail, overran in cases:
            with self.subTest(tail=tail):
                hook = self.script('before-hook', tail=tail)
                notifier, helpers = self.notifier(exec_before=hook, before_budget_s=0.5)
                start = time.monotonic()
                notifier.before_kill(self.victim_fields(), interrupt=lambda: False)
                self.assertEqual(helpers.running, {})   # finished, or killed at the budget
                self.assertEqual('still running after 0.5 s' in self.sink.text(), overran)
                if overran:
                    self.assertGreaterEqual(time.monotonic() - start, 0.5)
        self.assert_no_zombie_children()

    def test_before_hook_is_cut_short_when_memory_reaches_the_kill_level(self):
        hook = self.script('before-hook', tail='exec sleep 1000')
        notifier, helpers = self.notifier(exec_before=hook, before_budget_s=30)
        notifier.before_kill(self.victim_fields(), interrupt=lambda: True)
        self.assertEqual(helpers.running, {})
        self.assertIn('killing it; the kill goes ahead', self.sink.text())

    def test_warn_is_rate_limited(self):
        self.script('notify-send')
        self.bus(1000)
        notifier, helpers = self.notifier(notify=True, warn_percent=20)
        r = reading(8 * GIB, GIB)
        self.assertTrue(notifier.warn_low(r, 1000.0))
        self.assertFalse(notifier.warn_low(r, 1000.0 + bustd.WARN_EVERY_S - 1))
        self.finish(helpers)
        self.assertTrue(notifier.warn_low(r, 1000.0 + bustd.WARN_EVERY_S))
        self.finish(helpers)
        self.assertEqual(self.sink.text().count('memory low: 12.5% available (--warn 20%)'), 2)
        args = self.records('notify-send')[0]
        self.assertIn('arg=bustd: memory is low', args)
        self.assertIn('arg=Only 12.5% of memory is available: save your work.', args)

    def test_waiter_drops_an_fd_in_error(self):
        import select
        waiter = bustd.Waiter()
        r, w = os.pipe()
        os.close(r)                   # the write end now polls POLLERR for ever
        self.addCleanup(os.close, w)
        waiter.add(w, select.POLLPRI, 'broken', drain=False)
        waiter(0.5)
        self.assertEqual(waiter.woken_by, 'broken')
        waiter(0.05)
        self.assertIsNone(waiter.woken_by)       # unregistered: a plain sleep again

    def test_a_helper_killed_at_its_deadline_did_not_finish_in_time(self):
        hook = self.script('hook', tail='exec sleep 1000')
        # start_batch reads the clock 3 times, wait once; then every poll is past the
        # helper's deadline (0.5) but not wait's own (0.6).
        times = [0.0, 0.0, 0.0, 0.1, 0.55]
        clock = lambda: times.pop(0) if len(times) > 1 else times[0]
        helpers = bustd.Helpers(self.log, clock=clock)
        pids = helpers.start_batch([bustd.Command([hook], {}, '-P hook')], timeout_s=0.5)
        self.addCleanup(helpers.kill, pids)
        # The first poll kills and reaps it (its deadline passed): not a finish.
        self.assertFalse(helpers.wait(pids, 0.5))
        self.assertEqual(helpers.running, {})
        self.assertIn('-P hook (pid %d): killed after its 0.5 s timeout' % pids[0],
                      self.sink.text())

    def test_running_helpers_are_named_records(self):
        hook = self.script('hook', tail='sleep 5')
        helpers = bustd.Helpers(self.log, clock=lambda: 100.0, timeout_s=7)
        pid, = helpers.start_batch([bustd.Command([hook], {}, '-N hook')])
        self.addCleanup(helpers.kill, [pid])
        helper = helpers.running[pid]
        self.assertEqual((helper.label, helper.deadline, helper.timeout_s, helper.output),
                         ('-N hook', 107.0, 7.0, b''))
        self.assertGreater(helper.fd, 2)

    def test_template_example_has_the_real_field_types(self):
        fields = self.victim_fields()
        self.assertEqual(sorted(bustd.TEMPLATE_FIELDS), sorted(bustd.TEMPLATE_EXAMPLE))
        for name in bustd.TEMPLATE_FIELDS:
            self.assertIs(type(bustd.TEMPLATE_EXAMPLE[name]), type(fields[name]), name)
        self.assertEqual(bustd.render('{pid:05d} {name!r:>7}', fields), "04242 'firefox'")

    def far_waiter(self):
        """A Waiter whose far() waits for SIGUSR1; the test's own handler counts it."""
        got = []
        old = signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
        self.addCleanup(signal.signal, signal.SIGUSR1, old)
        waiter = bustd.Waiter()
        waiter.watch_signals_far((signal.SIGUSR1,))
        if waiter.far_signals is None:
            self.skipTest('no sigtimedwait here')
        return waiter, got

    def test_far_sleep_ends_on_a_signal_and_its_handler_still_runs(self):
        waiter, got = self.far_waiter()
        timer = threading.Timer(0.1, signal.pthread_kill,
                                (threading.main_thread().ident, signal.SIGUSR1))
        timer.start()
        self.addCleanup(timer.join)
        started = time.monotonic()
        self.assertTrue(waiter.far(5.0))
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertEqual(got, [])                          # held until release()
        self.assertIn(signal.SIGUSR1, signal.pthread_sigmask(signal.SIG_BLOCK, []))
        waiter.release()
        self.assertTrue(wait_until(lambda: got == [signal.SIGUSR1], 2))
        self.assertNotIn(signal.SIGUSR1, signal.pthread_sigmask(signal.SIG_BLOCK, []))

    def test_far_sleep_sleeps_its_time_and_leaves_signals_unblocked(self):
        waiter, got = self.far_waiter()
        started = time.monotonic()
        self.assertFalse(waiter.far(0.05))
        self.assertFalse(waiter.far(0.05))
        self.assertGreaterEqual(time.monotonic() - started, 0.1)
        waiter.release()
        self.assertEqual(got, [])
        self.assertNotIn(signal.SIGUSR1, signal.pthread_sigmask(signal.SIG_BLOCK, []))

    def test_far_sleep_polls_when_an_event_fd_matters_there(self):
        import select
        waiter, got = self.far_waiter()
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        waiter.add(r, select.POLLIN, 'cgroup threshold', far=True)
        os.write(w, b'x')
        started = time.monotonic()
        self.assertFalse(waiter.far(5.0))
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertEqual(waiter.woken_by, 'cgroup threshold')
        self.assertNotIn(signal.SIGUSR1, signal.pthread_sigmask(signal.SIG_BLOCK, []))

    def test_waiter_watches_one_threshold_eventfd_at_a_time(self):
        waiter = bustd.Waiter()
        first, w1 = os.pipe()
        second, w2 = os.pipe()
        self.addCleanup(os.close, w1)
        self.addCleanup(os.close, w2)
        waiter.watch_threshold(first)
        self.assertTrue(waiter.far_events)
        waiter.watch_threshold(second)
        self.assertRaises(OSError, os.fstat, first)       # replaced: closed
        os.write(w2, b'x')
        waiter(0.5)
        self.assertEqual(waiter.woken_by, 'cgroup threshold')
        waiter.watch_threshold(None)
        self.assertIsNone(waiter.threshold_fd)
        self.assertRaises(OSError, os.fstat, second)
        waiter(0.05)
        self.assertIsNone(waiter.woken_by)                # nothing watched: a plain sleep

    def test_a_threshold_eventfd_dropped_on_an_error_is_replaced_without_an_error(self):
        waiter = bustd.Waiter()
        r, w = os.pipe()
        waiter.watch_threshold(w)          # a pipe's write end polls POLLERR once its reader is gone
        os.close(r)
        waiter(0.05)
        self.assertEqual(waiter.woken_by, 'cgroup threshold')
        waiter.watch_threshold(None)       # was: KeyError from poller.unregister
        self.assertIsNone(waiter.threshold_fd)
        self.assertRaises(OSError, os.fstat, w)

    def test_render_leaves_unknown_fields(self):
        self.assertEqual(bustd.render('{name} {nope}', {'name': 'x'}), 'x {nope}')


class HooksInTheLoopTest(TempDirTest):
    """A hanging -N hook never delays the next kill; -P may make the kill unnecessary."""

    def test_no_kill_if_memory_recovered_while_the_before_hook_ran(self):
        hook = os.path.join(self.tmp, 'free-some-memory')
        with open(hook, 'w') as f:       # the admin's hook frees memory (here: the fake one)
            f.write('#!/usr/bin/env python3\nimport sys\nsys.path.insert(0, %r)\n'
                    'import test_bustd\nproc = test_bustd.FakeProc(%r)\n'
                    'proc.meminfo(total_kib=8 << 20, avail_kib=6 << 20)\n'
                    % (HERE, self.proc.root))
        os.chmod(hook, 0o755)
        child = start_victim()
        self.addCleanup(stop, child)
        self.proc.link(child.pid)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        log, sink = make_log()
        s = settings(self.proc, exec_before=hook)
        d = bustd.build_daemon(s, bustd.load_kernel_calls(), log)
        d.start()
        d.step()
        self.assertIsNone(child.poll())
        self.assertIn('memory recovered while the -P hook ran', sink.text())
        self.assertNotIn('kill: SIGTERM', sink.text())

    def test_daemon_keeps_killing_while_a_hook_hangs(self):
        hook = os.path.join(self.tmp, 'hang')
        with open(hook, 'w') as f:
            f.write('#!/bin/sh\nexec sleep 1000\n')
        os.chmod(hook, 0o755)
        first, second = start_victim(), start_victim()
        for child in (first, second):
            self.addCleanup(stop, child)
            self.proc.link(child.pid)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        log, sink = make_log()
        s = settings(self.proc, exec_after=hook)
        sensor = bustd.MachineSensor(s.proc)
        sensor.check()
        helpers = bustd.Helpers(log, timeout_s=60)
        self.addCleanup(lambda: helpers.kill(list(helpers.running)))
        d = bustd.Daemon(s, sensor, bustd.Policy(s), bustd.load_kernel_calls(), log,
                         bustd.Notifier(s, helpers, log), helpers)
        d.start()
        d.step()
        hook_pids = list(helpers.running)
        self.assertEqual(len(hook_pids), 1)
        d.step()                                    # the second victim, hook still hanging
        self.assertTrue(alive(hook_pids[0]))
        self.assertEqual(sorted(-reap(c) for c in (first, second)), [signal.SIGTERM] * 2)
        self.assertEqual(sink.text().count('exited: pid='), 2)
        self.assertIn('helpers still running (-N hook): not starting -N hook', sink.text())



# ----------------------------------------------------------------------------
# Interfaces that never crash or lie: output, signals at start-up, pidfile, logs
# ----------------------------------------------------------------------------

# Blocks the start-up signals, sends them to itself (they stay pending across
# exec), then execs bustd: the signals are there before bustd runs a line.
PENDING_SIGNALS = ("import os, signal, sys; "
                   "signal.pthread_sigmask(signal.SIG_BLOCK, "
                   "[signal.SIGINT, signal.SIGHUP, signal.SIGUSR1]); "
                   "[os.kill(os.getpid(), int(n)) for n in sys.argv[1].split(',')]; "
                   "os.execv(sys.executable, [sys.executable] + sys.argv[2:])")


def with_pending(signals, *args, **kw):
    """Popen bustd.py with args, the given signals already pending when it starts."""
    kw.setdefault('stdout', subprocess.PIPE)
    kw.setdefault('stderr', subprocess.PIPE)
    return subprocess.Popen([sys.executable, '-c', PENDING_SIGNALS,
                             ','.join(str(int(x)) for x in signals), BUSTD] + list(args),
                            universal_newlines=True, **kw)


class OutputTest(TempDirTest):
    def big_tree(self, count):
        for pid in range(1000, 1000 + count):
            self.proc.add(pid, name='worker-%d' % pid, oom_score=pid % 900)

    def test_list_into_a_closed_pipe_is_quiet(self):
        self.big_tree(200)                                   # a table of > 8 KiB
        p, err = self.run_into_a_closed_pipe('--list', '--proc', self.proc.root)
        self.assertEqual((p.returncode, err), (128 + signal.SIGPIPE, ''))

    def run_into_a_closed_pipe(self, *args):
        """Run bustd with args, its stdout a pipe nobody reads (`bustd ... | head -0`)."""
        read_fd, write_fd = os.pipe()
        os.close(read_fd)
        p = subprocess.Popen([sys.executable, BUSTD] + list(args), stdout=write_fd,
                             stderr=subprocess.PIPE, universal_newlines=True)
        os.close(write_fd)
        self.addCleanup(stop, p)
        _, err = p.communicate(timeout=30)
        return p, err

    def test_writes_to_a_full_device_are_one_line_and_exit_1(self):
        image = os.path.join(self.tmp, 'image')
        for argv in (['--list', '--proc', self.proc.root], ['--help'], ['--version'],
                     ['--print-unit'], ['--install', '--dry-run', '--root', image],
                     ['--uninstall', '--dry-run', '--root', image]):
            with self.subTest(argv=argv), open('/dev/full', 'w') as full:
                out = subprocess.run([sys.executable, BUSTD] + argv, stdout=full,
                                     stderr=subprocess.PIPE, universal_newlines=True,
                                     timeout=30)
                self.assertEqual(out.returncode, 1, out.stderr)
                self.assertEqual(out.stderr,
                                 'bustd: cannot write to stdout: No space left on device\n')

    def test_help_into_a_closed_pipe_is_quiet(self):
        p, err = self.run_into_a_closed_pipe('--help')
        self.assertEqual((p.returncode, err), (128 + signal.SIGPIPE, ''))

    def test_install_output_into_a_closed_pipe_is_quiet(self):
        image = os.path.join(self.tmp, 'image')
        for argv in (['--print-unit'], ['--install', '--dry-run', '--root', image]):
            with self.subTest(argv=argv):
                p, err = self.run_into_a_closed_pipe(*argv)
                self.assertEqual((p.returncode, err), (128 + signal.SIGPIPE, ''))
        self.assertFalse(os.path.exists(image))

    def test_sigint_during_a_long_list_exits_130_quietly(self):
        self.big_tree(1500)                                  # more than a pipe holds
        p = subprocess.Popen([sys.executable, BUSTD, '--list', '--proc', self.proc.root],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(stop, p)
        # Wait until it is stuck writing into the full pipe, in the middle of its output.
        self.assertTrue(wait_until(lambda: 'pipe' in read_text('/proc/%d/wchan' % p.pid), 30))
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
        self.assertEqual((p.returncode, err.decode()), (130, ''))


class StartupSignalsTest(TempDirTest):
    def test_sighup_and_sigusr1_before_the_handlers_are_acted_on(self):
        path = os.path.join(self.tmp, 'stderr')
        with open(path, 'w') as log:
            d = with_pending([signal.SIGHUP, signal.SIGUSR1], '-n', '--proc', self.proc.root,
                             stderr=log)
        self.addCleanup(stop, d)
        wait_until(lambda: 'status: kills so far' in read_text(path) or d.poll() is not None, 30)
        code, err = stop_and_read(d, path)
        d.stdout.close()
        self.assertEqual(code, 0, err)
        self.assertIn('ready: watching', err)
        self.assertIn('SIGHUP: reopened the log (stderr)', err)
        self.assertIn('status: kills so far: 0', err)
        self.assertNotIn('Traceback', err)

    def test_sigint_before_the_handlers_stops_the_daemon_quietly(self):
        d = with_pending([signal.SIGINT], '-n', '--proc', self.proc.root)
        self.addCleanup(stop, d)
        try:
            out, err = d.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.fail('SIGINT sent during start-up did not stop bustd')
        self.assertEqual(d.returncode, 0, err)
        self.assertIn('SIGINT received: exiting after 0 kill(s)', err)
        self.assertNotIn('Traceback', err)

    def test_sigint_before_a_list_exits_130_quietly(self):
        d = with_pending([signal.SIGINT], '--list', '--proc', self.proc.root)
        self.addCleanup(stop, d)
        out, err = d.communicate(timeout=30)
        self.assertEqual((d.returncode, out, err), (130, '', ''))


class PidfileTest(TempDirTest):
    def setUp(self):
        TempDirTest.setUp(self)
        self.pidfile = os.path.join(self.tmp, 'bustd.pid')

    def test_a_locked_pidfile_is_refused(self):
        import fcntl
        with open(self.pidfile, 'w') as f:
            f.write('4242\n')
            f.flush()
            fcntl.flock(f, fcntl.LOCK_EX)                   # as a running bustd holds it
            try:
                out = run_cli('-n', '--pidfile', self.pidfile, '--proc', self.proc.root,
                              timeout=20)
            except subprocess.TimeoutExpired:
                self.fail('started although the pidfile is locked')
        self.assertEqual(out.returncode, 1)
        self.assertEqual(out.stderr, 'bustd: --pidfile %s is locked by a running bustd (pid '
                         '4242); stop it first or give another --pidfile\n' % self.pidfile)

    def test_a_stale_pid_of_a_process_named_like_bustd_does_not_block(self):
        lookalike = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)',
                                      'tail -f /var/log/bustd.log'])
        self.addCleanup(stop, lookalike)
        with open(self.pidfile, 'w') as f:
            f.write('%d\n' % lookalike.pid)
        d = Daemon('--pidfile', self.pidfile, '--proc', self.proc.root)
        self.addCleanup(d.stop)
        with open(self.pidfile) as f:
            self.assertEqual(int(f.read()), d.proc.pid)
        self.assertEqual(d.stop(), 0)
        self.assertFalse(os.path.exists(self.pidfile))

    def test_closed_standard_fds_keep_the_log_and_the_lock(self):
        log = os.path.join(self.tmp, 'bustd.log')
        argv = ['sh', '-c', 'exec "$@" <&- >&- 2>&-', 'sh', sys.executable, BUSTD, '--dry-run',
                '--pidfile', self.pidfile, '--log-file', log, '--proc', self.proc.root]
        first = subprocess.run(argv, timeout=30)
        pid = int(read_text(self.pidfile) or 0)
        self.addCleanup(lambda: pid and alive(pid) and os.kill(pid, signal.SIGKILL))
        self.assertEqual(first.returncode, 0)
        self.assertTrue(wait_until(lambda: 'ready: watching' in read_text(log)), read_text(log))
        second = run_cli(*argv[6:], timeout=30)             # the lock is still held
        self.assertEqual(second.returncode, 1)
        self.assertIn('is locked by a running bustd (pid %d)' % pid, second.stderr)
        os.kill(pid, signal.SIGTERM)
        self.assertTrue(wait_until(lambda: not alive(pid)))
        self.assertIn('SIGTERM received: exiting', read_text(log))
        self.assertFalse(os.path.exists(self.pidfile))

    def test_two_daemons_started_at_once_run_once(self):
        log = os.path.join(self.tmp, 'bustd.log')
        for attempt in range(3):
            with self.subTest(attempt=attempt):
                starts = [subprocess.Popen([sys.executable, BUSTD, '--pidfile', self.pidfile,
                                            '--log-file', log, '--proc', self.proc.root],
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           universal_newlines=True) for _ in range(2)]
                outs = [p.communicate(timeout=30) for p in starts]
                codes = sorted(p.returncode for p in starts)
                pid = int(read_text(self.pidfile) or 0)
                running = [x for x in bustd.iter_pids('/proc') if x != os.getpid() and
                           self.pidfile.encode() in (bustd.read_file('/proc/%d/cmdline' % x)
                                                     or b'')]
                for x in running:                            # before any assertion can fail
                    os.kill(x, signal.SIGTERM)
                self.assertTrue(wait_until(lambda: not any(alive(x) for x in running)))
                self.assertEqual(codes, [0, 1], outs)
                self.assertEqual(running, [pid])
                # The loser saw the lock before or after the winner wrote its pid.
                self.assertRegex(''.join(err for _, err in outs), r'is locked by a running '
                                 r'bustd \((pid %d|starting up)\)' % pid)
                self.assertFalse(os.path.exists(self.pidfile))

    def test_no_temporary_file_is_left_or_followed(self):
        target = os.path.join(self.tmp, 'precious')
        with open(target, 'w') as f:
            f.write('keep me\n')
        os.symlink(target, self.pidfile)
        adir = os.path.join(self.tmp, 'adir')
        os.mkdir(adir)
        for path in (self.pidfile, adir):
            with self.subTest(path=path):
                try:
                    out = run_cli('-n', '--pidfile', path, '--proc', self.proc.root,
                                  timeout=20)
                except subprocess.TimeoutExpired:
                    self.fail('started with --pidfile %s' % path)
                self.assertEqual(out.returncode, 1)
                self.assertEqual(len(out.stderr.strip().split('\n')), 1, out.stderr)
                self.assertIn('--pidfile %s is a ' % path, out.stderr)
        self.assertEqual(read_text(target), 'keep me\n')
        self.assertEqual(sorted(os.listdir(self.tmp)), ['adir', 'bustd.pid', 'precious', 'proc'])


class LogFallbackTest(TempDirTest):
    def test_a_log_file_that_takes_nothing_falls_back_to_stderr(self):
        d = Daemon('--log-file', '/dev/full', '--proc', self.proc.root)
        self.addCleanup(d.stop)
        self.assertEqual(d.stop(), 0)
        self.assertEqual(d.text().count('cannot write the log to /dev/full (No space left on '
                                        'device): logging here until it works again'), 1)
        self.assertIn('SIGTERM received: exiting', d.text())

    def test_syslog_without_a_listener_falls_back(self):
        fallback = ListSink()
        log = bustd.Log(bustd.SyslogSink(os.path.join(self.tmp, 'no-log.sock')),
                        fallback=fallback)
        log.warning('kill: SIGTERM pid=1')
        log.info('exited: pid=1')
        self.assertEqual(fallback.lines, [
            (4, 'cannot write the log to syslog (%s/no-log.sock) (No such file or '
                'directory): logging here until it works again' % self.tmp),
            (4, 'kill: SIGTERM pid=1'), (6, 'exited: pid=1')])

    def test_short_writes_are_retried_then_the_rest_falls_back(self):
        path = os.path.join(self.tmp, 'bustd.log')
        code = ("import resource, sys; sys.path.insert(0, sys.argv[1]); import bustd; "
                "resource.setrlimit(resource.RLIMIT_FSIZE, (250, 250)); "
                "log = bustd.Log(bustd.FileSink(sys.argv[2]), fallback=bustd.StderrSink()); "
                "[log.info('line %d ' % i + 'x' * 60) for i in range(5)]")
        out = subprocess.run([sys.executable, '-c', code, HERE, path], stderr=subprocess.PIPE,
                             universal_newlines=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        written = read_text(path)
        self.assertEqual(len(written), 250)                  # filled up to the limit
        lines = out.stderr.split('\n')
        self.assertEqual(lines[0], 'bustd: warning: cannot write the log to %s (File too '
                         'large): logging here until it works again' % path)
        # Every line is whole somewhere: in the file, or on stderr.
        for i in range(5):
            line = 'line %d ' % i + 'x' * 60
            self.assertTrue(line + '\n' in written or 'bustd: ' + line in lines, i)
        self.assertIn('bustd: line 4 ' + 'x' * 60, lines)

    def test_reopen_in_a_removed_directory_says_so_where_it_is_seen(self):
        logdir = os.path.join(self.tmp, 'logs')
        os.mkdir(logdir)
        path = os.path.join(logdir, 'bustd.log')
        fallback = ListSink()
        log = bustd.Log(bustd.FileSink(path), fallback=fallback)
        log.info('before')
        shutil.rmtree(logdir)
        log.reopen()                                         # SIGHUP after logrotate
        log.warning('kill: SIGTERM pid=1')
        text = fallback.text()
        self.assertIn('SIGHUP: cannot reopen the log %s: No such file or directory' % path,
                      text)
        self.assertIn('kill: SIGTERM pid=1', text)
        os.mkdir(logdir)
        log.reopen()
        log.info('after')
        self.assertIn('after', read_text(path))
        self.assertNotIn('after', fallback.text())

    def test_where_lines_go_when_the_log_fails(self):
        path = os.path.join(self.tmp, 'bustd.log')
        foreground, daemon = bustd.Settings(daemon=False), bustd.Settings(daemon=True)
        choose = bustd.choose_fallback_sink
        self.assertIsInstance(choose(foreground, bustd.FileSink(path), {}), bustd.StderrSink)
        self.assertIsInstance(choose(foreground, bustd.SyslogSink(), {}), bustd.StderrSink)
        self.assertIsNone(choose(foreground, bustd.StderrSink(environ={}), {}))
        # A daemon's stderr is /dev/null: syslog where it listens, else the kernel log.
        self.assertIsInstance(choose(daemon, bustd.SyslogSink(), {}), bustd.KmsgSink)
        self.assertIsInstance(choose(daemon, bustd.FileSink(path), {}),
                              bustd.SyslogSink if bustd._is_socket('/dev/log')
                              else bustd.KmsgSink)

    def test_kernel_log_records(self):
        path = os.path.join(self.tmp, 'kmsg')
        open(path, 'w').close()
        sink = bustd.KmsgSink(path)
        self.assertTrue(sink.write(3, 'kill: SIGTERM pid=1'))
        self.assertEqual(read_text(path), '<3>bustd[%d]: kill: SIGTERM pid=1\n' % os.getpid())
        self.assertFalse(bustd.KmsgSink(os.path.join(self.tmp, 'none')).write(6, 'x'))

    def test_a_fifo_log_file_is_refused_at_once(self):
        fifo = os.path.join(self.tmp, 'fifo')
        os.mkfifo(fifo)
        fail_after(self, 5, 'opening a FIFO as the log waited for a reader')
        with self.assertRaises(OSError) as cm:
            bustd.FileSink(fifo)
        self.assertEqual(cm.exception.strerror, 'not a regular file')

    def test_a_symlink_log_file_is_refused_and_its_target_untouched(self):
        target = os.path.join(self.tmp, 'passwd')
        with open(target, 'w') as f:
            f.write('root:x:0:0::/root:/bin/sh\n')
        for name, to in (('link', target), ('dangling', os.path.join(self.tmp, 'none'))):
            link = os.path.join(self.tmp, name)
            os.symlink(to, link)
            with self.subTest(link=name), self.assertRaises(OSError) as cm:
                bustd.FileSink(link).write(6, 'kill: SIGTERM pid=1')
            self.assertEqual(cm.exception.errno, errno.ELOOP)
        self.assertEqual(read_text(target), 'root:x:0:0::/root:/bin/sh\n')
        self.assertFalse(os.path.exists(os.path.join(self.tmp, 'none')))


class RelaunchTest(TempDirTest):
    # One value per option; a new option needs one here (the test says so).
    SAMPLES = {
        'mem_percent': '15,8', 'swap_percent': '50', 'mem_size_kib': '2G,1G',
        'swap_size_kib': '1G', 'psi_avg10': '40', 'psi_mem_max_percent': '20',
        'thrash_stall_ms': '5000', 'thrash_horizon_s': '30',
        'cgroup': 'auto', 'unkillables': 'sshd|Xorg', 'ignore_re': '^postgres$',
        'ignore_root_user': None, 'default_unkillables': None, 'prefer_re': '^chrome$',
        'avoid_re': '^tmux$', 'match': 'cmdline', 'sort_by_rss': None, 'kill_pgroup': None,
        'list': None, 'notify': None, 'notify_title': '{name}', 'notify_body': '{pid:>7}',
        'warn_percent': '30', 'exec_after': '/bin/true', 'exec_before': '/bin/true',
        'daemon': None, 'pidfile': '/run/x.pid', 'log_file': '/var/log/x.log',
        'syslog': None, 'verbose': None, 'report_interval_s': '60', 'dry_run': None,
        'proc': '/host/proc', 'sys_fs': '/host/sys', 'kill_cgroup': None,
        'metrics_file': '/var/lib/node_exporter/bustd.prom', 'install': None,
        'install_root': '/mnt/image', 'init_system': 'openrc', 'print_unit': None,
    }
    # Options that exclude another one above (or only apply to the installer).
    LEFT_OUT = ('--syslog', '--kill-cgroup', '--install', '--uninstall', '--root', '--init',
                '--print-unit')

    def full_argv(self):
        argv = []
        for action in bustd.build_parser()._actions:
            if not action.option_strings or action.dest in ('help', 'version'):
                continue
            self.assertIn(action.dest, self.SAMPLES, 'give %s a sample value here'
                          % action.option_strings[-1])
            value = self.SAMPLES[action.dest]
            if action.option_strings[-1] not in self.LEFT_OUT:
                argv += [action.option_strings[-1]] + ([] if value is None else [value])
        return argv

    def test_every_setting_survives_the_trip_to_the_isolated_interpreter(self):
        import marshal
        s = bustd.parse_settings(self.full_argv())
        defaults = vars(bustd.Settings())
        for name, value in vars(s).items():
            if name in ('run_root', 'before_budget_s', 'install_args', 'syslog', 'kill_cgroup',
                        'install', 'install_root', 'init_system', 'print_unit'):
                continue                                     # not set by full_argv()
            self.assertNotEqual(value, defaults[name], name)  # really populated
        back = bustd.Settings.from_dict(marshal.loads(marshal.dumps(s.to_dict())))
        plain = lambda x: dict((k, getattr(v, 'pattern', v)) for k, v in vars(x).items())
        self.assertEqual(plain(back), plain(s))

    def test_a_setting_marshal_cannot_carry_is_reported(self):
        s = bustd.Settings()
        s.extra = object()                                   # what a careless new option adds
        why = bustd.relaunch(s, compile('', 'x', 'exec'), [], bustd.Flags())
        self.assertIn('settings cannot be marshalled', why)

    def test_running_without_the_relaunch_says_so(self):
        shim = ("import sys; p = sys.argv[1]; g = {'__name__': 'shim', '__file__': p}; "
                "exec(compile(open(p).read(), p, 'exec'), g); "
                "sys.exit(g['launch'](sys.argv[2:]))")
        path = os.path.join(self.tmp, 'stderr')
        d = popen_logging_to(path, [sys.executable, '-c', shim, BUSTD, '-n', '--proc',
                                    self.proc.root])
        self.addCleanup(stop, d)
        wait_until(lambda: 'ready: watching' in read_text(path) or d.poll() is not None, 30)
        _, err = stop_and_read(d, path)
        self.assertEqual(err.count('warning: cannot relaunch in an isolated interpreter (no '
                                   'code object of this module): running in this one'), 1, err)
        self.assertIn('ready: watching', err)

    def test_the_daemon_runs_in_the_isolated_interpreter(self):
        d = Daemon('--proc', self.proc.root)
        self.addCleanup(d.stop)
        with open('/proc/%d/cmdline' % d.proc.pid, 'rb') as f:
            argv = f.read().split(b'\0')
        self.assertEqual(argv[1:4], [b'-I', b'-S', b'-c'])
        self.assertIn(b"g['isolated_main'](settings)", argv[4])
        self.assertEqual(argv[-4:-1], [b'-n', b'--proc', self.proc.root.encode()])


class BuildDaemonTest(TempDirTest):
    """build_daemon, the one place a Daemon is put together, for the daemon and the tests."""

    def setUp(self):
        super(BuildDaemonTest, self).setUp()
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=6 * GIB)

    def test_the_parts_are_wired_as_the_settings_say(self):
        s = settings(self.proc, unkillables=['sshd'], metrics_file=self.tmp + '/bustd.prom')
        log, sink = make_log()
        calls = no_kernel_calls()
        environ = {'NOTIFY_SOCKET': '@bustd-test', 'PATH': ''}
        flags = bustd.Flags()
        flags.pid = 0                                     # as before a daemonize fork
        d = bustd.build_daemon(s, calls, log, environ=environ, flags=flags)
        self.assertIs(d.settings, s)
        self.assertIs(d.calls, calls)
        self.assertIs(d.log, log)
        self.assertIsInstance(d.sensor, bustd.MachineSensor)
        self.assertEqual(d.sensor.proc, self.proc.root)
        self.assertTrue(d.sensor.has_mem_available)      # checked: meminfo was read
        self.assertIsNone(d.policy.only_uid)
        self.assertEqual(d.policy.globs, ['sshd'])
        self.assertIs(d.helpers.log, log)
        self.assertIs(d.notifier.helpers, d.helpers)
        self.assertIs(d.notifier.settings, s)
        self.assertIs(d.notifier.environ, environ)
        self.assertEqual(d.service.address, '\0bustd-test')
        self.assertIsInstance(d.waiter, bustd.Waiter)
        self.assertIs(d.sleep, d.waiter)
        self.assertIs(d.far_sleep, d.waiter)
        self.assertIs(d.clock, time.monotonic)
        self.assertIs(d.flags, flags)
        self.assertEqual(flags.pid, os.getpid())
        self.assertEqual((d.metrics.path, d.metrics.mode), (s.metrics_file, 'machine'))

    def test_given_parts_clock_and_sleep_are_used_as_they_are(self):
        s = settings(self.proc)
        log, sink = make_log()
        sensor = bustd.MachineSensor(s.proc)
        sensor.check()
        policy = bustd.Policy(s, 4242)
        clock, sleep = (lambda: 7.0), (lambda seconds: None)
        d = bustd.build_daemon(s, no_kernel_calls(), log, sensor, policy, clock=clock,
                               sleep=sleep)
        self.assertIs(d.sensor, sensor)
        self.assertIs(d.policy, policy)
        self.assertIs(d.clock, clock)
        self.assertIs(d.sleep, sleep)
        self.assertIsNone(d.waiter)
        self.assertIsNone(d.far_sleep)
        self.assertIsNone(d.metrics)                      # no --metrics-file
        self.assertEqual(d.flags.pid, os.getpid())

    def test_the_sensors_warnings_are_logged(self):
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=6 * GIB, with_available=False)
        log, sink = make_log()
        d = bustd.build_daemon(settings(self.proc), no_kernel_calls(), log)
        self.assertFalse(d.sensor.has_mem_available)
        self.assertIn('MemAvailable', sink.text())

    def test_the_threshold_event_is_rearmed_with_each_set_of_thresholds(self):
        fds = []

        class EventSensor(bustd.MachineSensor):
            def threshold_event_fd(self, calls, th):
                r, w = os.pipe()
                os.close(w)
                fds.append(r)
                return r
        s = settings(self.proc)
        log, sink = make_log()
        sensor = EventSensor(s.proc)
        sensor.check()
        d = bustd.build_daemon(s, no_kernel_calls(), log, sensor)
        self.addCleanup(d.waiter.watch_threshold, None)
        d.start()
        self.assertEqual(fds, [d.waiter.threshold_fd])
        self.assertTrue(d.waiter.far_events)             # far sleeps poll it too
        d.step()                                          # same totals: same thresholds
        self.assertEqual(len(fds), 1)
        self.proc.meminfo(total_kib=4 * GIB, avail_kib=3 * GIB)
        d.step()
        self.assertEqual(len(fds), 2)
        self.assertEqual(d.waiter.threshold_fd, fds[1])
        self.assertRaises(OSError, os.fstat, fds[0])      # the old one is closed

    def test_a_bad_cgroup_is_a_usage_error(self):
        s = settings(self.proc, cgroup='/no/such/bustd-test-group')
        with self.assertRaises(bustd.UsageError) as caught:
            bustd.build_daemon(s, no_kernel_calls(), make_log()[0])
        self.assertIn('--cgroup', str(caught.exception))



class DocumentationTest(unittest.TestCase):
    def readme_options(self):
        """Return {flag: default cell} from the README's options table."""
        with open(os.path.join(HERE, 'README.md')) as f:
            text = f.read().split('\n## Options\n')[1].split('\n## ')[0]
        import re
        rows = {}
        for line in text.split('\n'):
            if not line.startswith('| `-'):
                continue
            cells = [c.strip() for c in line.replace('\\|', '\0').strip('|').split(' | ')]
            default = cells[1].strip('`').replace('\0', '|')
            for flag in re.findall(r'(?<![\w-])(--?[A-Za-z][\w-]*)', cells[0]):
                rows[flag] = default
        return rows

    def test_readme_options_match_help_and_settings(self):
        help_text = ' '.join(run_cli('--help').stdout.split())
        rows = self.readme_options()
        defaults = bustd.Settings()
        parser = bustd.build_parser()
        flags = set()
        for action in parser._actions:
            flags.update(action.option_strings)
            if not action.option_strings or action.dest in ('help', 'version'):
                continue
            shown = bustd.default_text(action, defaults)
            for flag in action.option_strings:
                with self.subTest(flag=flag):
                    self.assertIn(flag, rows, 'the README has no row for %s' % flag)
                    self.assertEqual(rows[flag], shown or '–')
            if shown and action.nargs != 0:                  # switches are simply off
                self.assertIn('(default %s)' % shown, help_text)
        self.assertEqual(sorted(set(rows) - flags), [], 'README rows for unknown options')
        # argparse keeps no default of its own: parsing nothing gives Settings().
        self.assertEqual(vars(bustd.parse_settings([])), vars(defaults))

    def test_top_level_holds_only_the_project_files(self):
        allowed = {'README.md', 'LICENSE', 'bustd.service', 'bustd.py', 'test_bustd.py',
                   'bench', 'etc', '__pycache__'}
        extra = [n for n in os.listdir(HERE) if not n.startswith('.') and n not in allowed]
        self.assertEqual(extra, [])


# ----------------------------------------------------------------------------
# Kill-path safety: hostile /proc data, namespaces, spins and sprees
# ----------------------------------------------------------------------------

FAKE_PID = 4000001    # above this machine's pid_max, below the kernel's ceiling

PTHREAD_EXIT_CODE = textwrap.dedent("""
    import ctypes, sys, threading, time
    with open('/proc/self/oom_score_adj', 'w') as f:
        f.write('1000')
    ready = threading.Event()
    def work():
        hold = b'x' * (64 << 20)
        ready.set()
        while True:
            time.sleep(1000)
    threading.Thread(target=work).start()
    ready.wait()
    sys.stdout.write('ready\\n')
    sys.stdout.flush()
    ctypes.CDLL(None).pthread_exit(None)    # the leader goes; the worker lives on
""")


def refusing_calls(errno_value=errno.ESRCH):
    """KernelCalls whose pidfd_open always fails: nothing can ever be signalled."""
    calls = bustd.KernelCalls()
    tried = []

    def pidfd_open(pid):
        tried.append(pid)
        raise OSError(errno_value, os.strerror(errno_value))

    def pidfd_send_signal(fd, sig):
        raise AssertionError('no pidfd can have been opened')
    calls.pidfd_open, calls.pidfd_send_signal = pidfd_open, pidfd_send_signal
    calls.tried = tried
    return calls


def unshare_available():
    """Return None if `unshare --pid --fork --mount-proc` works here, else why not."""
    unshare = shutil.which('unshare')
    if unshare is None:
        return 'no unshare(1) here'
    try:
        out = subprocess.run([unshare, '--pid', '--fork', '--mount-proc', 'true'],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 'unshare failed: %s' % exc
    if out.returncode != 0:
        return 'unshare --pid --fork --mount-proc fails here: %s' % out.stderr.decode().strip()
    return None


def skip_without_unshare(test):
    why = unshare_available()
    if why is not None:
        sys.stderr.write('\n[skip] %s\n' % why)
        test.skipTest(why)


class NamespaceTest(TempDirTest):
    def test_a_child_namespaces_proc_is_refused(self):
        skip_without_unshare(self)
        inside = subprocess.Popen(['unshare', '--pid', '--fork', '--kill-child', '--mount-proc',
                                   'sleep', '60'])
        self.addCleanup(stop, inside)
        # The sleeper is pid 1 of the new namespace, a child of unshare here.
        children = '/proc/%d/task/%d/children' % (inside.pid, inside.pid)
        self.assertTrue(wait_until(lambda: (bustd.read_small(children) or b'').strip()))
        sleeper = int(bustd.read_small(children).split()[0])
        tree = '/proc/%d/root/proc' % sleeper

        def mounted():      # the namespace's own procfs, where pid 1 is the sleeper
            stat = bustd.parse_stat(bustd.read_small(tree + '/1/stat') or b'')
            return stat is not None and stat.name == 'sleep'
        self.assertTrue(wait_until(mounted))
        with self.assertRaises(bustd.EnvironmentProblem):
            bustd.check_pid_namespace(tree)
        out = run_cli('--list', '--proc', tree)
        self.assertEqual(out.returncode, 1, out.stdout)
        self.assertIn('another PID namespace', out.stderr)

    def test_a_pid_is_checked_in_bustds_own_proc_before_any_signal(self):
        # A tree (no "self") whose entry agrees with itself but names, by
        # number, a different process here: that process must not be hit.
        host = start_victim()
        self.addCleanup(stop, host)
        self.proc.add(host.pid, oom_score=2000, starttime=77)
        for calls in (bustd.load_kernel_calls(), no_kernel_calls()):
            with self.subTest(pidfd=calls.pidfd_open is not None):
                s = settings(self.proc)
                victim, _ = bustd.find_victim(s.proc, bustd.Policy(s))
                self.assertEqual(victim.pid, host.pid)
                target = bustd.Target(victim, calls, s.proc)
                self.assertFalse(target.open() and target.send(0))
                target.close()
        self.assertIsNone(host.poll())

    def test_pid_2_and_its_children_are_ordinary_processes(self):
        # docker run --init: tini is pid 1, the app pid 2, its worker pid 4.
        self.proc.add(1, name='tini', ppid=0, oom_score=1)
        self.proc.add(2, name='app', ppid=1, oom_score=600)
        self.proc.add(4, name='worker', ppid=2, oom_score=900)
        self.proc.add(7, name='innocent', ppid=1, oom_score=100)
        s = settings(self.proc)
        victim, _ = bustd.find_victim(s.proc, bustd.Policy(s))
        self.assertEqual(victim.pid, 4)
        listed = dict((p.pid, p.never) for p in bustd.scan_processes(s.proc, bustd.Policy(s)))
        self.assertEqual(listed, {1: 'init', 2: None, 4: None, 7: None})

    def test_container_recipe_end_to_end_in_a_pid_namespace(self):
        """The README's recipe: an init is PID 1, bustd and the app run under it."""
        skip_without_unshare(self)
        init = textwrap.dedent(r"""
            import os, signal, subprocess, sys
            child = subprocess.Popen(sys.argv[1:])
            while True:     # PID 1: reap everything until the app has gone
                pid, status = os.wait()
                if pid == child.pid:
                    sys.stdout.write('app status %d\n' % status)
                    break
            # Stop bustd with SIGTERM and wait for it: it logs its kill line
            # before it exits, where --kill-child's SIGKILL could cut it off.
            os.kill(-1, signal.SIGTERM)
            try:
                while True:
                    os.wait()
            except ChildProcessError:
                sys.exit(0)
        """)
        # -m 99,98: "memory is low" on any machine, so no real pressure is
        # needed; inside the namespace only these processes exist.
        recipe = '%s %s -n -m 99,98 & exec %s -c "$APP"' % (sys.executable, BUSTD,
                                                           sys.executable)
        env = dict(os.environ, APP=VICTIM_CODE)
        out = subprocess.run(['unshare', '--pid', '--fork', '--kill-child', '--mount-proc',
                              sys.executable, '-c', init, 'sh', '-c', recipe],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             universal_newlines=True, env=env, timeout=30)
        self.assertRegex(out.stderr, r'kill: SIG(TERM|KILL) pid=2 ', out.stderr)
        self.assertRegex(out.stdout, r'app status (9|15)\b', out.stderr)
        self.assertIn('PID 1 of this PID namespace', out.stderr)


class HostileProcTest(TempDirTest):
    def daemon(self, calls=None, **kw):
        log, sink = make_log(verbose=True)
        s = settings(self.proc, **kw)
        d = bustd.build_daemon(s, calls or refusing_calls(), log, sleep=lambda seconds: None)
        d.start()
        return d, sink

    def test_a_leader_that_called_pthread_exit_is_judged_by_its_threads(self):
        child = subprocess.Popen([sys.executable, '-c', PTHREAD_EXIT_CODE],
                                 stdout=subprocess.PIPE)
        self.addCleanup(stop, child)
        self.assertEqual(child.stdout.readline(), b'ready\n')
        self.assertTrue(wait_until(lambda: bustd.parse_stat(
            bustd.read_small('/proc/%d/stat' % child.pid)).state == 'Z'))
        self.proc.link(child.pid)
        self.proc.add(FAKE_PID, name='innocent', oom_score=10)
        s = settings(self.proc)
        p = [p for p in bustd.scan_processes(s.proc, bustd.Policy(s)) if p.pid == child.pid][0]
        self.assertIsNone(p.never)
        self.assertGreater(p.rss_kib, 60 * MIB)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=300 * MIB)
        d, sink = self.daemon(calls=bustd.load_kernel_calls())
        d.step()
        self.assertEqual(reap(child), -signal.SIGKILL, sink.text())

    def test_default_protection_cannot_be_claimed_by_renaming(self):
        exe_dir = os.path.join(self.tmp, 'sbin')
        os.makedirs(exe_dir)
        sshd = os.path.join(exe_dir, 'sshd')
        open(sshd, 'w').close()
        os.chown(sshd, 0, 0)
        uids = 'Uid:\t%d\t%d\t%d\t%d\n'
        add = self.proc.add
        add(10, name='systemd-hog', oom_score=900, uid=1000)
        self.proc.write('10/status', (uids % ((1000,) * 4)).encode())
        add(11, name='sshd', oom_score=800, uid=0)      # non-dumpable: /proc/PID is root's
        self.proc.write('11/status', (uids % ((1000,) * 4)).encode())
        add(12, name='sshd', oom_score=950, uid=1000)   # a user's sshd session child
        self.proc.write('12/status', (uids % ((1000,) * 4)).encode())
        os.symlink(sshd, os.path.join(self.proc.root, '12/exe'))
        add(13, name='dpkg', oom_score=990, uid=0)
        self.proc.write('13/status', (uids % ((0,) * 4)).encode())
        add(14, name='innocent', oom_score=100, uid=0)
        s = settings(self.proc)
        found = dict((p.pid, p.protected) for p in bustd.scan_processes(s.proc, bustd.Policy(s)))
        self.assertEqual(found, {10: None, 11: None, 12: 'default: sshd', 13: 'default: dpkg',
                                 14: None})
        self.assertEqual(bustd.find_victim(s.proc, bustd.Policy(s))[0].pid, 10)

    def test_meminfo_with_missing_fields_is_unknown_not_zero(self):
        d, sink = self.daemon()
        for text in (b'MemTotal: 8388608 kB\n',
                     b'MemTotal: 8388608 kB\nMemAvailable: 100 kB\n',     # no swap lines
                     b'MemTotal: 8388608 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n'):
            with self.subTest(text=text):
                self.proc.write('meminfo', text)
                r = d.sensor.read_exact(bustd.Reading(), d.th)
                self.assertFalse(r.exact)
                d.step()
                self.assertNotIn('memory is low', sink.text())
        self.assertEqual(sink.text().count('lacks'), 1)           # one warning

    def test_psi_out_of_range_is_ignored_with_one_warning(self):
        for figure in (b'inf', b'1e9', b'nan', b'-1', b'100.5'):
            with self.subTest(figure=figure):
                self.assertEqual(bustd.parse_psi(b'some avg10=' + figure + b' avg60=0\n'),
                                 (None, None))
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=GIB)          # 12.5 %: PSI rule range
        d, sink = self.daemon()
        self.proc.write('pressure/memory', b'some avg10=1e9 avg60=0.00 avg300=0.00 total=1\n')
        for _ in range(3):
            d.step()
        self.assertEqual(bustd.decide(d.reading, d.th), 0)
        self.assertNotIn('memory is low', sink.text())
        self.assertEqual(sink.text().count('no "some avg10" between 0 and 100'), 1)

    def test_only_pids_from_1_to_pid_max_are_candidates(self):
        self.proc.add(0, oom_score=2000)
        huge = '100000000000000000000'
        self.proc.write(huge + '/stat', stat_line(10 ** 20, 'huge'))
        self.proc.write(huge + '/oom_score', b'2000\n')
        self.proc.write(huge + '/oom_score_adj', b'0\n')
        self.proc.add(50, oom_score=10)
        self.proc.add(41, oom_score=1500)
        self.proc.write('sys/kernel/pid_max', b'45\n')         # 50 is above this tree's pid_max
        s = settings(self.proc)
        self.assertEqual(sorted(bustd.iter_pids(s.proc)), [41])
        os.unlink(os.path.join(self.proc.root, 'sys/kernel/pid_max'))
        self.assertEqual(sorted(bustd.iter_pids(s.proc)), [41, 50])
        self.assertEqual(bustd.find_victim(s.proc, bustd.Policy(s))[0].pid, 41)
        # kill() is never called with a pid <= 0 (0 is bustd's own process
        # group), even when the start time matches (signal 0: only a check).
        own = bustd.parse_stat(bustd.read_small('/proc/self/stat'))
        zero = make_process(0, starttime=own.starttime)
        self.proc.write('0/stat', stat_line(0, 'zero', starttime=own.starttime))
        target = bustd.Target(zero, no_kernel_calls(), self.proc.root)
        self.assertFalse(target.send(0))

    def test_a_victim_that_cannot_be_opened_is_passed_over_without_a_spin(self):
        for pid, score in ((FAKE_PID, 900), (FAKE_PID + 1, 800), (FAKE_PID + 2, 700)):
            self.proc.add(pid, oom_score=score)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        calls = refusing_calls(errno.EMFILE)
        d, sink = self.daemon(calls=calls)
        delays = [d.step() for _ in range(4)]
        self.assertTrue(all(delay > 0 for delay in delays), delays)
        self.assertEqual(calls.tried, [FAKE_PID, FAKE_PID + 1, FAKE_PID + 2])
        self.assertEqual(delays[-1], bustd.NO_VICTIM_RETRY_S)
        self.assertEqual(sink.text().count('trying the next candidate'), 1)   # rate-limited
        self.assertEqual(sink.text().count('no process may be killed'), 1)

    def test_zoneinfo_garbage_never_crashes_nor_blinds(self):
        good = b'Node 0, zone Normal\n  pages free 10\n        high 100\n        managed 1000\n'
        for managed in (b'abc', b'-5000000000', b'\xb2', b''):
            with self.subTest(managed=managed):
                data = good.replace(b'managed 1000', b'managed ' + managed)
                self.assertEqual(bustd.parse_zoneinfo_reserve_kib(data), 400)
        self.proc.write('zoneinfo', good.replace(b'100', b'99999999999'))
        sensor = bustd.MachineSensor(self.proc.root)
        sensor.sysinfo = self.sysinfo_like_meminfo()
        sensor.check()
        self.assertIsNone(sensor.reserve_kib)        # 2 x 400 TiB: not below MemTotal
        self.assertFalse(sensor.uses_sysinfo)

    def sysinfo_like_meminfo(self, total_kib=None):
        def fill(reading):
            fields = bustd.parse_meminfo(bustd.read_file(self.proc.root + '/meminfo'))
            reading.mem_total_kib = total_kib or fields['MemTotal']
            reading.mem_free_kib = fields['MemFree'] if total_kib is None else total_kib
            reading.swap_total_kib = reading.swap_free_kib = 0
        return fill

    def test_meminfo_that_disagrees_with_sysinfo_is_read_on_every_poll(self):
        # lxcfs: /proc/meminfo is the container's, sysinfo(2) the host's.
        self.proc.write('zoneinfo', b'Node 0, zone Normal\n  high 100\n  managed 1000\n')
        self.proc.meminfo(total_kib=2 * GIB, avail_kib=25 * MIB)
        sensor = bustd.MachineSensor(self.proc.root)
        sensor.sysinfo = self.sysinfo_like_meminfo(total_kib=64 * GIB)
        sensor.check()
        self.assertFalse(sensor.uses_sysinfo)
        self.assertIn('on every poll: sysinfo(2) says MemTotal 64.0 GiB', sensor.describe())
        th = bustd.compute_thresholds(settings(self.proc), 2 * GIB, 0)
        r = sensor.read(bustd.Reading(), th)
        self.assertEqual((r.exact, r.mem_available_kib), (True, 25 * MIB))
        self.assertEqual(bustd.decide(r, th), signal.SIGKILL)

    def test_non_ascii_digit_names_are_not_pids(self):
        self.proc.add(10, oom_score=100)
        os.makedirs(os.path.join(self.proc.root, '\u00b2'))
        os.makedirs(os.path.join(self.proc.root, '\u0663'))      # Arabic-Indic three
        self.assertEqual(list(bustd.iter_pids(self.proc.root)), [10])
        out = run_cli('--list', '--proc', self.proc.root)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertNotIn('Traceback', out.stderr)

    def test_psi_trigger_only_on_procfs_or_cgroupfs(self):
        path = os.path.join(self.proc.root, 'pressure/memory')
        before = bustd.read_file(path)
        fd, why = bustd.open_psi_trigger(path)
        self.assertIsNone(fd)
        self.assertIn('not procfs or cgroupfs', why)
        self.assertEqual(bustd.read_file(path), before)
        self.assertEqual(bustd.mount_fs_type('36 1 0:5 / /proc rw - proc proc rw\n'
                                             '37 36 0:6 / /proc/x\\040y rw - tmpfs t rw\n',
                                             '/proc/x y/z'), 'tmpfs')
        if os.path.exists('/proc/pressure/memory'):
            fd, why = bustd.open_psi_trigger('/proc/pressure/memory')
            if fd is not None:
                os.close(fd)
            self.assertNotIn('not procfs', why)

    def test_names_and_cmdlines_cannot_forge_fields_of_the_kill_line(self):
        self.proc.add(10, name='x" pid=1 uid=0', oom_score=900, cmdline=b'a\\" pid=1\0b')
        s = settings(self.proc)
        p = bustd.scan_processes(s.proc, bustd.Policy(s))[0]
        p.cmdline = bustd.read_cmdline(s.proc, p.pid)
        line = bustd.kill_line(signal.SIGTERM, p, 'trigger')
        self.assertIn(r'name="x\" pid=1 uid=0"', line)
        self.assertIn(r'cmdline="a\\\" pid=1 b"', line)
        import shlex
        fields = dict(w.split('=', 1) for w in shlex.split(line.split(': ', 1)[1]) if '=' in w)
        self.assertEqual((fields['pid'], fields['uid']), ('10', str(os.getuid())))

    def test_a_cgroup_name_cannot_forge_fields_of_the_kill_line_or_the_refusal(self):
        # A user names the cgroups of a delegated subtree (user@UID.service) at will.
        hostile = 'x pid=1 uid=0 name="init" \x1b[2J'
        cg = os.path.join(self.tmp, 'cg')
        os.makedirs(os.path.join(cg, hostile))
        self.proc.write('self/mountinfo', ('30 20 0:26 / %s rw - cgroup2 cgroup2 rw\n'
                                           % cg).encode())
        self.proc.write('%d/cgroup' % FAKE_PID, ('0::/%s\n' % hostile).encode())
        self.proc.add(FAKE_PID, oom_score=900)
        s = settings(self.proc)
        p = bustd.scan_processes(s.proc, bustd.Policy(s))[0]
        line = bustd.kill_line(signal.SIGKILL, p, 'trigger', cgroup=os.path.join(cg, hostile))
        import shlex
        words = shlex.split(line.split(': ', 1)[1])
        self.assertEqual([w for w in words if w.startswith(('pid=', 'uid='))],
                         ['pid=%d' % FAKE_PID, 'uid=%d' % os.getuid()])
        self.assertIn('cgroup=%s' % os.path.join(cg, hostile).replace('\x1b', '\\x1b'), words)
        self.assertNotIn('\x1b', line)
        # No cgroup.procs lists the victim: refused, and the path is escaped there too.
        target, refusal = bustd.make_cgroup_target(p, no_kernel_calls(), s.proc, bustd.Policy(s))
        self.assertIsNone(target)
        self.assertIn('not listed in its cgroup.procs', refusal)
        self.assertNotIn('\x1b', refusal)
        self.assertIn('x pid=1 uid=0 name=\\"init\\" \\x1b[2J', refusal)
        refusal = bustd.cgroup_kill_refusal(cg + '/a', cg, cg + '/a/' + hostile, None, [], False)
        self.assertNotIn('\x1b', refusal)

    def test_kill_cgroup_survives_hostile_mountinfo_and_cgroup_files(self):
        # An exception here would repeat on every poll: no kill, ever.
        import random
        rnd = random.Random(12)
        cg = os.path.join(self.tmp, 'cg')
        good_mountinfo = ('30 20 0:26 / %s rw - cgroup2 cgroup2 rw\n31 20 0:27 / %s1 rw - '
                          'cgroup cgroup rw,memory\n' % (cg, cg)).encode()
        good_cgroup = b'0::/a/b\n4:memory:/x\n'
        pieces = [b'0::', b'/', b'..', b'\0', b'\xff', b' - ', b'cgroup2', b'memory', b'\n',
                  b':', b'\\040', b'//', b' ']
        self.proc.add(FAKE_PID, oom_score=900)
        s = settings(self.proc)
        policy = bustd.Policy(s)
        p = bustd.scan_processes(s.proc, policy)[0]
        cases = [(good_mountinfo, b'0::/a/b\0\n'), (good_mountinfo.replace(b'/cg', b'/c\0g'),
                                                     good_cgroup)]
        for _ in range(400):
            texts = [bytearray(good_mountinfo), bytearray(good_cgroup)]
            for text in texts:
                for _ in range(rnd.randint(0, 4)):
                    at = rnd.randint(0, len(text))
                    text[at:at] = rnd.choice(pieces)
                if rnd.random() < 0.2:
                    del text[rnd.randint(0, len(text)):]
            cases.append(tuple(bytes(t) for t in texts))
        for mountinfo, cgroup in cases:
            self.proc.write('self/mountinfo', mountinfo)
            self.proc.write('%d/cgroup' % FAKE_PID, cgroup)
            try:
                target, refusal = bustd.make_cgroup_target(p, no_kernel_calls(), s.proc, policy)
            except Exception as exc:
                self.fail('%r with mountinfo %r, cgroup %r' % (exc, mountinfo, cgroup))
            self.assertIsNone(target)     # no such directory holds the victim
            self.assertTrue(refusal)

    def test_a_cgroup_name_in_any_bytes_is_the_victims_own_directory(self):
        # Not UTF-8, and not ASCII: Python 3.6 in the C locale (a service
        # without LANG) raised UnicodeEncodeError on every attempt: no kill.
        name = b'caf\xc3\xa9-\xff'
        cg = os.path.join(self.tmp, 'cg')
        os.makedirs(os.path.join(os.fsencode(cg), name))
        with open(os.path.join(os.fsencode(cg), name, b'cgroup.procs'), 'w') as f:
            f.write('%d\n' % FAKE_PID)
        self.proc.write('self/mountinfo', ('30 20 0:26 / %s rw - cgroup2 cgroup2 rw\n'
                                           % cg).encode())
        self.proc.write('%d/cgroup' % FAKE_PID, b'0::/' + name + b'\n')
        self.proc.add(FAKE_PID, oom_score=900)
        code = textwrap.dedent('''
            import os, sys
            sys.path.insert(0, %r)
            import bustd
            s = bustd.Settings(proc=%r)
            p = bustd.scan_processes(s.proc, bustd.Policy(s))[0]
            target, refusal = bustd.make_cgroup_target(p, bustd.KernelCalls(), s.proc,
                                                       bustd.Policy(s))
            print(refusal or 'target %%s' %% bustd.printable(target.cgroup))
            print(os.fsencode(target.cgroup) == os.path.join(os.fsencode(%r), %r))
            ''' % (HERE, self.proc.root, cg, name))
        for env in ({'PATH': os.environ.get('PATH', '/usr/bin:/bin')}, dict(os.environ)):
            with self.subTest(lang=env.get('LANG')):
                out = subprocess.run([sys.executable, '-c', code], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, universal_newlines=True, env=env)
                self.assertEqual(out.returncode, 0, out.stderr)
                self.assertEqual(out.stdout.split('\n')[1:], ['True', ''], out.stdout)

    def test_a_backtracking_pattern_cannot_blind_the_scan(self):
        import re
        self.proc.add(FAKE_PID, oom_score=900, cmdline=b'a' * 60 + b'!\0')
        self.proc.add(FAKE_PID + 1, oom_score=100, cmdline=b'sleep 1\0')
        s = settings(self.proc, match='cmdline', ignore_re=re.compile(BACKTRACKING))
        log, sink = make_log()
        policy = bustd.Policy(s)
        policy.log = log

        def hung(signum, frame):
            raise AssertionError('the scan is stuck in the pattern')
        previous = signal.signal(signal.SIGALRM, hung)
        signal.alarm(20)
        try:
            victim, _ = bustd.find_victim(s.proc, policy)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
        self.assertEqual(victim.pid, FAKE_PID)
        self.assertTrue(policy.bounded)
        self.assertIn('took more than 0.05 s of CPU on the command line of pid %d' % FAKE_PID,
                      sink.text())
        self.assertEqual(bustd.find_victim(s.proc, policy)[0].pid, FAKE_PID)
        self.assertEqual(sink.text().count('took more than'), 1)     # one warning

    def test_patterns_see_a_bounded_command_line(self):
        self.proc.add(10, cmdline=b'a' * 4000 + b'\0')
        s = settings(self.proc, match='cmdline')
        policy = bustd.Policy(s)
        p = bustd.scan_processes(s.proc, policy)[0]
        self.assertLess(len(policy.match_text(p)), 4000)
        self.assertEqual(len(policy.match_text(p)), bustd.PATTERN_TEXT_MAX)


class DaemonResilienceTest(TempDirTest):
    daemon = HostileProcTest.daemon

    def victim(self, *args):
        child = start_victim(*args)
        self.addCleanup(stop, child)
        self.proc.link(child.pid)
        return child

    def test_a_victim_that_outlives_sigkill_is_passed_over(self):
        first, second = self.victim(), self.victim()
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=300 * MIB)      # SIGKILL level
        calls = bustd.load_kernel_calls()
        if calls.pidfd_send_signal is None:
            self.skipTest('no pidfds here')
        sent = []
        calls.pidfd_send_signal = lambda fd, sig: sent.append(sig)     # as if stuck in D state
        d, sink = self.daemon(calls=calls)
        d.kill_wait_s = 0.2
        d.step()
        d.step()
        chosen = [int(line.split(' pid=')[1].split()[0]) for line in sink.text().split('\n')
                  if line.startswith('kill: ')]
        self.assertEqual(len(chosen), 2, sink.text())
        self.assertNotEqual(chosen[0], chosen[1])
        self.assertIn('passing it over', sink.text())
        self.assertIsNone(first.poll())
        self.assertIsNone(second.poll())

    def test_no_killing_spree_when_memory_does_not_come_back(self):
        children = [self.victim() for _ in range(5)]
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)      # stays at SIGTERM
        now = [1000.0]
        d, sink = self.daemon(calls=bustd.load_kernel_calls())
        d.clock = lambda: now[0]
        for _ in range(len(children) + 2):
            d.step()
            now[0] += 1.0
        dead = [c for c in children if c.poll() is not None]
        self.assertLess(len(dead), len(children) - 1)
        self.assertEqual(len(dead), bustd.KILLS_PER_WINDOW)
        self.assertEqual(sink.text().count('settled: mem_available=8.5%'), len(dead))
        self.assertEqual(sink.text().count('no more kills until the SIGKILL level'), 1)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=300 * MIB)      # the SIGKILL level
        d.step()
        self.assertEqual(len([c for c in children if c.poll() is not None]), len(dead) + 1)
        now[0] += bustd.KILL_CAP_WINDOW_S
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        d.step()                                                        # a new window
        self.assertEqual(len([c for c in children if c.poll() is not None]), len(dead) + 2)

    def test_an_error_in_the_status_path_does_not_end_the_daemon(self):
        d, sink = self.daemon()

        def broken():
            raise ValueError('a bad /proc entry')
        d.sensor.member_pids = broken
        d.flags.usr1 = True
        sleeps = []

        def sleep(seconds):
            sleeps.append(seconds)
            if len(sleeps) == 2:
                d.flags.stop = signal.SIGTERM
        d.sleep = sleep
        self.assertEqual(d.run(), bustd.EXIT_OK)
        self.assertEqual(len(sleeps), 2)
        self.assertIn('unexpected error, still watching: ValueError: a bad /proc entry',
                      sink.text())

    def test_each_repeated_warning_has_its_own_throttle(self):
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        d, sink = self.daemon(calls=calls_refusing_signals(self))
        d.step()                                    # nobody: "no process may be killed"
        child = self.victim()
        d.step()                                    # one that cannot be signalled
        self.assertIn('no process may be killed', sink.text())
        self.assertIn('pid %d python3: cannot signal it' % child.pid, sink.text())
        self.assertIsNone(child.poll())
        throttle = bustd.Throttle(60)
        self.assertEqual([throttle.ready(t) for t in (0, 1, 59, 60)], [True, False, False, True])
        self.assertEqual(throttle.suppressed_text(), ' (2 more like this not logged)')

    def test_records_are_built_whole(self):
        with self.assertRaises(TypeError):
            bustd.Process()
        with self.assertRaises(TypeError):
            bustd.ProcStat()
        stat = bustd.parse_stat(stat_line(10, 'w'))
        self.assertEqual((stat.pid, stat.name, stat.starttime, stat.rss_pages),
                         (10, 'w', 5000, 256))
        p = bustd.Process(stat, 1024, 0, 10, 0)
        self.assertEqual((p.pid, p.badness, p.preference, p.protected, p.cmdline),
                         (10, 10, 0, None, None))


BACKTRACKING = r'^(\w+\s?)*$'


class PromptStopTest(TempDirTest):
    """SIGTERM stops the real daemon at once, wherever it is."""

    def start(self, *args):
        d = subprocess.Popen([sys.executable, BUSTD, '-n', '--proc', self.proc.root] +
                             list(args), stderr=subprocess.PIPE, universal_newlines=True)
        self.addCleanup(d.stderr.close)
        self.addCleanup(stop, d)
        lines = []
        reader = threading.Thread(target=lambda: lines.extend(d.stderr))
        reader.daemon = True
        reader.start()
        return d, lines

    def stop_time_s(self, d):
        start = time.monotonic()
        d.send_signal(signal.SIGTERM)
        try:
            d.wait(5)
        except subprocess.TimeoutExpired:
            d.kill()
            d.wait()
            return None
        return time.monotonic() - start

    def test_sigterm_right_after_the_signal_still_logs_the_kill_line(self):
        # The daemon's own handlers, in this process: SIGTERM arrives between
        # the victim's signal and its log line (systemctl stop during an OOM).
        child = start_victim()
        self.addCleanup(stop, child)
        self.proc.link(child.pid)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        calls = bustd.load_kernel_calls()
        if calls.pidfd_send_signal is None:
            self.skipTest('no pidfds here')
        real_send = calls.pidfd_send_signal

        def send_then_sigterm(fd, sig):
            real_send(fd, sig)
            os.kill(os.getpid(), signal.SIGTERM)
        calls.pidfd_send_signal = send_then_sigterm
        log, sink = make_log()
        s = settings(self.proc)
        d = bustd.build_daemon(s, calls, log)
        d.start()
        saved = dict((n, signal.getsignal(n)) for n in (signal.SIGTERM, signal.SIGINT,
                                                         signal.SIGHUP, signal.SIGUSR1))
        fd = bustd.install_signal_handlers(d.flags)
        try:
            d.flags.interruptible = True
            with self.assertRaises(bustd.Stopping):
                d.step()
        finally:
            d.flags.interruptible = False
            for n, handler in saved.items():
                signal.signal(n, handler)
            signal.set_wakeup_fd(-1)
            os.close(fd)
        self.assertEqual(reap(child), -signal.SIGTERM)
        self.assertIn('kill: SIGTERM pid=%d ' % child.pid, sink.text())
        self.assertEqual(d.flags.stop, signal.SIGTERM)

    def test_sigterm_during_a_kill_wait(self):
        child = start_victim('ignore-term')
        self.addCleanup(stop, child)
        self.proc.link(child.pid)
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)      # SIGTERM, 5 s grace
        d, lines = self.start()
        self.assertTrue(wait_until(lambda: any('kill: SIGTERM' in l for l in lines), 30))
        time.sleep(0.2)
        took = self.stop_time_s(d)
        sys.stderr.write('[SIGTERM during a kill wait: exited after %s s] ' % took)
        self.assertIsNotNone(took, 'still running 5 s after SIGTERM')
        self.assertLess(took, bustd.TERM_GRACE_S - 1)   # not after the wait, whatever the load
        self.assertEqual(d.returncode, 0)
        self.assertIsNone(child.poll())                 # stopping is not escalating

    def test_sigterm_during_a_scan_slowed_by_a_backtracking_pattern(self):
        # Each match is cut at 50 ms of CPU: 100 equal candidates make a 5 s scan.
        for i in range(100):
            self.proc.add(FAKE_PID + i, oom_score=900, cmdline=b'a' * 60 + b'!\0')
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        d, lines = self.start('--match', 'cmdline', '--ignore', BACKTRACKING)
        time.sleep(2)
        self.assertFalse([l for l in lines if 'ready' in l])   # still in the start-up scan
        took = self.stop_time_s(d)
        sys.stderr.write('[SIGTERM during a scan: exited after %s s] ' % took)
        self.assertIsNotNone(took, 'still running 5 s after SIGTERM')
        self.assertEqual(d.returncode, 0, ''.join(lines))
        self.assertNotIn('Traceback', ''.join(lines))


class FuzzProcTest(TempDirTest):
    """--list and the daemon against random /proc contents: never a traceback."""

    SEED = 20261126
    ROUNDS = 60

    def garbage(self, rnd, good):
        choice = rnd.randrange(9)
        if choice == 0:
            return bytes(rnd.randrange(256) for _ in range(rnd.randrange(64)))
        if choice == 1:
            return good[:rnd.randrange(len(good) + 1)]
        if choice == 2:
            return good.replace(b'1', str(10 ** rnd.randrange(5, 40)).encode())
        if choice == 3:
            return good.replace(b' 0', b' -' + str(rnd.randrange(1, 10 ** 12)).encode())
        if choice == 4:
            return good.replace(b'w', '\u00b2\u0663\u00e9'.encode()).replace(b'5', b'\xb2')
        if choice == 5:
            return b''
        if choice == 6:
            return good.replace(b' ', b'\0')
        if choice == 7:
            return good.replace(b'.', b'e9').replace(b'=0', b'=inf')
        return good

    def build(self, rnd, round_):
        root = os.path.join(self.tmp, 'fuzz%d' % round_)
        proc = FakeProc(root)
        proc.meminfo(total_kib=8 * GIB, avail_kib=rnd.choice((300 * MIB, 700 * MIB, 6 * GIB)),
                     swap_total_kib=rnd.choice((0, GIB)), swap_free_kib=rnd.choice((0, 10)))
        proc.write('zoneinfo', b'Node 0, zone Normal\n  high 100\n  managed 1000\n'
                               b'  protection: (0, 10, 20)\n')
        names = ['meminfo', 'pressure/memory', 'zoneinfo']
        for i in range(8):
            pid = FAKE_PID + i
            proc.add(pid, name='w%d' % i, oom_score=rnd.randrange(-10, 3000), ppid=1,
                     pgrp=FAKE_PID)
            proc.write('%d/status' % pid, b'Name:\tw\nUid:\t1000\t1000\t1000\t1000\n')
            names += ['%d/%s' % (pid, n) for n in ('stat', 'oom_score', 'oom_score_adj',
                                                   'cmdline', 'status')]
        for name in ('0', '\u00b2', '-1', '99999999999999999999', '1e3', ' 7'):
            os.makedirs(os.path.join(root, name), exist_ok=True)
        for name in names:
            if rnd.random() < 0.5:
                good = bustd.read_file(os.path.join(root, name)) or b''
                proc.write(name, self.garbage(rnd, good))
        return proc

    def test_list_and_daemon_survive_random_proc_contents(self):
        import io
        import random
        rnd = random.Random(self.SEED)
        statuses = set()
        for round_ in range(self.ROUNDS):
            proc = self.build(rnd, round_)
            with self.subTest(round=round_):
                out = io.StringIO()
                real_out, real_err_fd = sys.stdout, os.dup(2)
                err = tempfile.TemporaryFile()
                sys.stdout = out
                os.dup2(err.fileno(), 2)          # bustd writes its errors to fd 2
                try:
                    status = bustd.main(['--list', '--proc', proc.root,
                                         '--match', rnd.choice(('name', 'cmdline'))])
                finally:
                    sys.stdout = real_out
                    os.dup2(real_err_fd, 2)
                    os.close(real_err_fd)
                err.seek(0)
                errors = err.read().decode('utf-8', 'replace')
                err.close()
                statuses.add(status)
                self.assertIn(status, (0, 1), errors)
                self.assertNotIn('Traceback', out.getvalue() + errors)
                if status == 0:
                    self.assertIn('PID', out.getvalue())
                log, sink = make_log(verbose=True)
                s = settings(proc, kill_pgroup=rnd.random() < 0.3,
                             sort_by_rss=rnd.random() < 0.3)
                try:
                    d = bustd.build_daemon(s, refusing_calls(), log, sleep=lambda seconds: None)
                except bustd.EnvironmentProblem:
                    continue
                d.start()
                for _ in range(3):
                    d.step()
                d.status_lines()
                self.assertNotIn('unexpected error', sink.text())
        self.assertEqual(statuses, {0, 1})     # the fuzz reached both outcomes


# ----------------------------------------------------------------------------
# --metrics-file: Prometheus text exposition format
# ----------------------------------------------------------------------------

_METRIC_NAME = re.compile(r'[a-zA-Z_:][a-zA-Z0-9_:]*\Z')
_LABEL_NAME = re.compile(r'[a-zA-Z_][a-zA-Z0-9_]*\Z')
_TYPES = ('counter', 'gauge', 'histogram', 'summary', 'untyped')


def parse_exposition(text):
    """Parse the Prometheus text format strictly; return {(name, labels): value}, {name: type}.

    Raises ValueError for anything the format forbids or node_exporter would
    reject: bad names, a TYPE after its samples or twice, a family split in
    two, bad label escapes, duplicate label names or series, a counter not
    named *_total, a value that is not a float, no final newline, HELP or
    TYPE missing for a family (our own rule: every family is documented).
    """
    if not text.endswith('\n'):
        raise ValueError('no newline at the end')
    samples, types, helps, done, current = {}, {}, {}, set(), None
    for number, line in enumerate(text[:-1].split('\n'), 1):
        where = 'line %d: %r' % (number, line)
        if line.startswith('#'):
            parts = line.split(' ', 3)
            if len(parts) < 3 or parts[0] != '#' or parts[1] not in ('HELP', 'TYPE'):
                continue     # a plain comment
            name = parts[2]
            if not _METRIC_NAME.match(name):
                raise ValueError('bad metric name: ' + where)
            if name in done or name in (types if parts[1] == 'TYPE' else helps):
                raise ValueError('%s repeated or after its samples: %s' % (parts[1], where))
            if parts[1] == 'TYPE':
                if len(parts) != 4 or parts[3] not in _TYPES:
                    raise ValueError('bad type: ' + where)
                types[name] = parts[3]
            else:
                help_text = parts[3] if len(parts) == 4 else ''
                if re.search(r'\\[^\\n]', help_text.replace('\\\\', '')):
                    raise ValueError('bad escape in HELP: ' + where)
                helps[name] = help_text
            if current is not None and current != name:
                done.add(current)
            current = name
            continue
        if not line.strip():
            raise ValueError('empty line: ' + where)
        m = re.match(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)( -?\d+)?\Z', line)
        if not m:
            raise ValueError('bad sample line: ' + where)
        name, label_text, value = m.group(1), m.group(2), m.group(3)
        family = name
        if family not in types:
            raise ValueError('sample without TYPE: ' + where)
        if family in done:
            raise ValueError('family split in two: ' + where)
        if current != family:
            if current is not None:
                done.add(current)
            current = family
        labels = parse_labels(label_text[1:-1] if label_text else '', where)
        if types[family] == 'counter' and not name.endswith('_total'):
            raise ValueError('counter not named *_total: ' + where)
        if value not in ('NaN', '+Inf', '-Inf'):
            try:
                float(value)
            except ValueError:
                raise ValueError('bad value: ' + where)
            if not re.match(r'[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\Z', value):
                raise ValueError('bad value: ' + where)
        key = (name, tuple(sorted(labels.items())))
        if key in samples:
            raise ValueError('duplicate series: ' + where)
        samples[key] = float(value)
    for name in types:
        if name not in helps:
            raise ValueError('no HELP for ' + name)
    for name in helps:
        if name not in types:
            raise ValueError('no TYPE for ' + name)
    return samples, types


def parse_labels(text, where):
    """Parse 'a="x",b="y"' with the format's escapes (\\\\, \\", \\n); return a dict."""
    labels, i = {}, 0
    while i < len(text):
        m = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="').match(text, i)
        if not m:
            raise ValueError('bad label name: ' + where)
        name, i, value = m.group(1), m.end(), ''
        while True:
            if i >= len(text):
                raise ValueError('unterminated label value: ' + where)
            c = text[i]
            if c == '\\':
                nxt = text[i + 1:i + 2]
                if nxt not in ('\\', '"', 'n'):
                    raise ValueError('bad escape in a label value: ' + where)
                value += '\n' if nxt == 'n' else nxt
                i += 2
            elif c == '"':
                i += 1
                break
            elif c == '\n':
                raise ValueError('raw newline in a label value: ' + where)
            else:
                value += c
                i += 1
        if name in labels or name.startswith('__'):
            raise ValueError('duplicate or reserved label %s: %s' % (name, where))
        labels[name] = value
        if i < len(text):
            if text[i] != ',':
                raise ValueError('expected a comma: ' + where)
            i += 1
    return labels


class ExpositionParserTest(unittest.TestCase):
    """The strict parser itself: it must reject what the format forbids."""

    GOOD = ('# HELP a_total Things.\n# TYPE a_total counter\n'
            'a_total{x="1",y="q\\"\\\\\\n"} 3\na_total{x="2"} 0\n'
            '# HELP b B.\n# TYPE b gauge\nb NaN\n')

    def test_accepts_the_format(self):
        samples, types = parse_exposition(self.GOOD)
        self.assertEqual(samples[('a_total', (('x', '1'), ('y', 'q"\\\n')))], 3)
        self.assertEqual(types, {'a_total': 'counter', 'b': 'gauge'})

    def test_rejects(self):
        head = '# HELP b B.\n# TYPE b gauge\n'
        cases = [
            ('no final newline', head + 'b 1'),
            ('sample before TYPE', 'b 1\n' + head),
            ('duplicate series', head + 'b{x="1"} 1\nb{x="1"} 2\n'),
            ('bad escape', head + 'b{x="\\t"} 1\n'),
            ('unterminated', head + 'b{x="1} 1\n'),
            ('bad metric name', '# HELP 1b B.\n# TYPE 1b gauge\n1b 1\n'),
            ('bad label name', head + 'b{1x="1"} 1\n'),
            ('duplicate label', head + 'b{x="1",x="2"} 1\n'),
            ('bad value', head + 'b one\n'),
            ('bad type', '# HELP b B.\n# TYPE b gauges\nb 1\n'),
            ('TYPE twice', head + '# TYPE b gauge\nb 1\n'),
            ('family split', head + 'b 1\n# HELP c C.\n# TYPE c gauge\nc 1\nb{x="2"} 1\n'),
            ('counter name', '# HELP c C.\n# TYPE c counter\nc 1\n'),
            ('no HELP', '# TYPE b gauge\nb 1\n'),
            ('empty line', head + '\nb 1\n'),
        ]
        for why, text in cases:
            with self.subTest(why=why):
                self.assertRaises(ValueError, parse_exposition, text)


class MetricsTest(TempDirTest):
    """--metrics-file: what is written, when, and that it never costs a kill."""

    FAMILIES = ('bustd_up', 'bustd_info', 'bustd_kills_total', 'bustd_last_kill_timestamp_seconds',
                'bustd_memory_available_bytes', 'bustd_swap_free_bytes', 'bustd_psi_some_avg10',
                'bustd_level_bytes', 'bustd_start_time_seconds',
                'bustd_last_kill_decision_seconds')

    def test_label_values_are_escaped(self):
        for raw, escaped in (('plain', 'plain'), ('a"b', 'a\\"b'), ('a\\b', 'a\\\\b'),
                             ('a\nb', 'a\\nb'), ('\\"\n', '\\\\\\"\\n')):
            with self.subTest(raw=raw):
                self.assertEqual(bustd.prom_label_value(raw), escaped)

    def test_every_family_with_the_reading(self):
        m = bustd.Metrics(os.path.join(self.tmp, 'bustd.prom'), 'machine', clock=lambda: 1700.5)
        r = reading(total=8 * GIB, avail=3 * GIB, swap_total=2 * GIB, swap_free=GIB, psi=1.25)
        th = bustd.compute_thresholds(settings(self.proc), 8 * GIB, 2 * GIB)
        samples, types = parse_exposition(m.render(r, th))
        self.assertEqual(sorted(types), sorted(self.FAMILIES))
        self.assertEqual(samples[('bustd_up', ())], 1)
        self.assertEqual(samples[('bustd_info', (('mode', 'machine'),
                                                 ('version', bustd.__version__)))], 1)
        self.assertEqual(samples[('bustd_memory_available_bytes', ())], 3 << 30)
        self.assertEqual(samples[('bustd_swap_free_bytes', ())], 1 << 30)
        self.assertEqual(samples[('bustd_psi_some_avg10', ())], 1.25)
        self.assertEqual(samples[('bustd_level_bytes', (('signal', 'SIGTERM'),))],
                         th.mem_term_kib * 1024)
        self.assertEqual(samples[('bustd_level_bytes', (('signal', 'SIGKILL'),))],
                         th.mem_kill_kib * 1024)
        self.assertEqual(samples[('bustd_start_time_seconds', ())], 1700.5)
        # Every signal x rule series exists from the start, so increase() sees the first kill.
        kills = dict((k[1], v) for k, v in samples.items() if k[0] == 'bustd_kills_total')
        self.assertEqual(len(kills), 2 * len(bustd.KILL_RULES))
        self.assertEqual(set(kills.values()), {0})
        self.assertEqual(types['bustd_kills_total'], 'counter')

    def test_no_psi_family_without_psi_and_mode_label_escaped(self):
        m = bustd.Metrics(os.path.join(self.tmp, 'bustd.prom'), 'cgr"oup\\\n')
        th = bustd.compute_thresholds(settings(self.proc), 8 * GIB, 0)
        samples, types = parse_exposition(m.render(reading(), th, up=0))
        self.assertNotIn('bustd_psi_some_avg10', types)
        self.assertEqual(samples[('bustd_up', ())], 0)
        self.assertIn(('bustd_info', (('mode', 'cgr"oup\\\n'), ('version', bustd.__version__))),
                      samples)

    def test_write_is_atomic_and_world_readable(self):
        path = os.path.join(self.tmp, 'bustd.prom')
        m = bustd.Metrics(path, 'machine')
        log, sink = make_log()
        old = os.umask(0o077)       # bustd.service runs with UMask=0077
        try:
            self.assertTrue(m.write('# HELP a A.\n# TYPE a gauge\na 1\n', log, 0.0))
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o644)
        self.assertEqual([n for n in os.listdir(self.tmp) if 'tmp' in n], [])
        # The rename replaces the file: a reader holding the old one keeps it whole.
        with open(path) as reader:
            m.write('# HELP a A.\n# TYPE a gauge\na 2\n', log, 0.0)
            self.assertEqual(reader.read(), '# HELP a A.\n# TYPE a gauge\na 1\n')
        self.assertEqual(read_text(path), '# HELP a A.\n# TYPE a gauge\na 2\n')

    def test_a_symlink_planted_at_the_temporary_name_is_not_followed(self):
        # Whoever may write to the directory (node_exporter's user owns the
        # textfile directory on many systems) can guess PATH.PID.tmp.
        path = os.path.join(self.tmp, 'bustd.prom')
        target = os.path.join(self.tmp, 'precious')
        with open(target, 'w') as f:
            f.write('precious\n')
        os.symlink(target, '%s.%d.tmp' % (path, os.getpid()))
        m = bustd.Metrics(path, 'machine')
        log, sink = make_log()
        self.assertTrue(m.write('# HELP a A.\n# TYPE a gauge\na 1\n', log, 0.0))
        self.assertEqual(read_text(target), 'precious\n')
        self.assertFalse(os.path.islink(path))
        self.assertEqual(read_text(path), '# HELP a A.\n# TYPE a gauge\na 1\n')
        self.assertEqual([n for n in os.listdir(self.tmp) if 'tmp' in n], [])

    def test_never_replaces_a_device_fifo_or_directory(self):
        # `--metrics-file /dev/null` would have made /dev/null a text file.
        made = {'fifo': os.mkfifo, 'dir': os.mkdir}
        try:
            os.mknod(os.path.join(self.tmp, 'null'), stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except OSError:
            pass     # not root: the FIFO stands for it
        for name in ('null', 'fifo', 'dir'):
            path = os.path.join(self.tmp, name)
            if name in made:
                made[name](path)
            elif not os.path.exists(path):
                continue
            with self.subTest(name=name):
                before = os.lstat(path).st_mode
                log, sink = make_log()
                self.assertFalse(bustd.Metrics(path, 'machine').write('x 1\n', log, 0.0))
                self.assertEqual(os.lstat(path).st_mode, before)
                self.assertIn('--metrics-file: cannot write %s (it is not a regular file' % path,
                              sink.text())
        self.assertEqual([n for n in os.listdir(self.tmp) if 'tmp' in n], [])

    def test_never_replaces_a_symlink(self):
        # `--metrics-file /dev/stdout` replaced the machine's /dev/stdout symlink.
        target = os.path.join(self.tmp, 'target')
        with open(target, 'w') as f:
            f.write('keep\n')
        link = os.path.join(self.tmp, 'stdout')
        os.symlink(target, link)
        log, sink = make_log()
        self.assertFalse(bustd.Metrics(link, 'machine').write('x 1\n', log, 0.0))
        self.assertEqual(os.readlink(link), target)
        self.assertEqual(read_text(target), 'keep\n')
        self.assertIn('--metrics-file: cannot write %s (it is not a regular file' % link,
                      sink.text())

    def test_makes_its_directory_one_level_deep(self):
        m = bustd.Metrics(os.path.join(self.tmp, 'run-bustd', 'bustd.prom'), 'machine')
        log, sink = make_log()
        old = os.umask(0o077)
        try:
            self.assertTrue(m.write('x\n', log, 0.0))
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(m.path)).st_mode), 0o755)
        self.assertIn('created %s' % os.path.dirname(m.path), sink.text())

    def test_a_directory_swapped_for_a_symlink_after_mkdir_changes_no_mode(self):
        # Whoever may write the parent renames bustd's new directory away and
        # puts a symlink to a private file in its place, between mkdir and chmod.
        secret = os.path.join(self.tmp, 'secret')
        with open(secret, 'w') as f:
            f.write('x\n')
        os.chmod(secret, 0o600)
        path = os.path.join(self.tmp, 'run-bustd', 'bustd.prom')
        real_mkdir = os.mkdir

        def mkdir_then_swap(name, mode=0o777):
            real_mkdir(name, mode)
            if name == os.path.dirname(path):
                os.rename(name, name + '.moved')
                os.symlink(secret, name)
        os.mkdir = mkdir_then_swap
        try:
            log, sink = make_log()
            bustd.Metrics(path, 'machine').write('x 1\n', log, 0.0)
        finally:
            os.mkdir = real_mkdir
        self.assertEqual(stat.S_IMODE(os.stat(secret).st_mode), 0o600)

    def test_failing_write_is_one_throttled_warning(self):
        m = bustd.Metrics(os.path.join(self.tmp, 'missing', 'deeper', 'bustd.prom'), 'machine')
        log, sink = make_log()
        self.assertFalse(m.write('x\n', log, 100.0))
        self.assertFalse(m.write('x\n', log, 200.0))
        self.assertEqual(len([1 for p, _ in sink.lines if p == 4]), 1)
        self.assertIn('cannot write', sink.text())
        self.assertFalse(m.write('x\n', log, 100.0 + bustd.METRICS_WARN_EVERY_S))
        self.assertEqual(len([1 for p, _ in sink.lines if p == 4]), 2)
        os.makedirs(os.path.join(self.tmp, 'missing', 'deeper'))
        self.assertTrue(m.write('x\n', log, 5000.0))
        self.assertIn('writing %s again' % m.path, sink.text())

    def test_the_program_writes_at_start_and_says_down_at_exit(self):
        path = os.path.join(self.tmp, 'bustd.prom')
        d = Daemon('--metrics-file', path)
        try:
            samples, _ = parse_exposition(read_text(path))
            self.assertEqual(samples[('bustd_up', ())], 1)
            self.assertIn('metrics: %s (Prometheus text format)' % path, d.text())
        finally:
            self.assertEqual(d.stop(), 0)
        samples, _ = parse_exposition(read_text(path))
        self.assertEqual(samples[('bustd_up', ())], 0)

    def loop(self, clock, report_s=0.0):
        log, sink = make_log()
        s = settings(self.proc, report_interval_s=report_s)
        d = bustd.build_daemon(s, no_kernel_calls(), log, clock=clock, sleep=lambda seconds: None)
        d.start()
        d.metrics = bustd.Metrics(os.path.join(self.tmp, 'bustd.prom'), 'machine')
        return d, sink

    def test_written_every_minute_from_the_loop(self):
        now = [1000.0]
        d, sink = self.loop(lambda: now[0])
        path = d.metrics.path
        d.step()
        self.assertTrue(os.path.exists(path))
        os.unlink(path)
        now[0] += bustd.METRICS_EVERY_S - 1
        d.step()
        self.assertFalse(os.path.exists(path))
        now[0] += 1
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=5 * GIB)
        d.step()
        samples, _ = parse_exposition(read_text(path))
        self.assertEqual(samples[('bustd_memory_available_bytes', ())], 5 << 30)

    def test_written_with_each_report(self):
        now = [1000.0]
        d, sink = self.loop(lambda: now[0], report_s=10)
        d.step()
        os.unlink(d.metrics.path)
        now[0] += 10
        d.step()
        self.assertIn('mem avail:', sink.text())
        self.assertTrue(os.path.exists(d.metrics.path))


class MetricsKillTest(RealKillTest):
    """A real kill with --metrics-file: counted by signal and rule, written after the exit."""

    def test_kill_is_counted_and_written_after_the_victim_is_gone(self):
        child = self.victim()
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)      # memory rule, no swap
        d, sink = self.daemon()
        path = os.path.join(self.tmp, 'bustd.prom')
        d.metrics = bustd.Metrics(path, 'machine')
        d.metrics.next_write_s = float('inf')       # only the kill writes
        seen = []
        real_write = d.metrics.write

        def write(text, log, now_s):
            seen.append(alive(child.pid))
            return real_write(text, log, now_s)
        d.metrics.write = write
        before = time.time()
        d.step()
        self.assertEqual(reap(child), -signal.SIGTERM)
        self.assertEqual(seen, [False])      # written once, after the victim had exited
        samples, _ = parse_exposition(read_text(path))
        self.assertEqual(samples[('bustd_kills_total', (('rule', 'memory'),
                                                        ('signal', 'SIGTERM')))], 1)
        self.assertEqual(sum(v for k, v in samples.items() if k[0] == 'bustd_kills_total'), 1)
        self.assertGreaterEqual(samples[('bustd_last_kill_timestamp_seconds', ())], before - 1)
        self.assertGreaterEqual(samples[('bustd_last_kill_decision_seconds', ())], 0)

    def test_a_thrashing_kill_is_counted_under_its_rule(self):
        child = self.victim()
        now = [100.0]
        d, sink = self.daemon()
        d.clock = lambda: now[0]
        path = os.path.join(self.tmp, 'bustd.prom')
        d.metrics = bustd.Metrics(path, 'machine')
        for i in range(200):     # swap fills at 60 MiB/s while tasks stall 60 % of the time
            t = i / 10.0
            self.proc.meminfo(1000 * MIB, 120 * MIB, swap_total_kib=1000 * MIB,
                              swap_free_kib=1000 * MIB - int(t * 60 * MIB), anon_kib=800 * MIB)
            self.proc.psi(0.0, full_total_us=int(t * 0.6e6))
            d.step()
            if child.poll() is not None:
                break
            now[0] += 0.1
        self.assertEqual(reap(child), -signal.SIGTERM)
        samples, _ = parse_exposition(read_text(path))
        self.assertEqual(samples[('bustd_kills_total', (('rule', 'thrash'),
                                                        ('signal', 'SIGTERM')))], 1)

    def test_kill_happens_when_the_file_cannot_be_written(self):
        child = self.victim()
        self.proc.meminfo(total_kib=8 * GIB, avail_kib=700 * MIB)
        d, sink = self.daemon()
        d.metrics = bustd.Metrics(os.path.join(self.tmp, 'no', 'such', 'dir', 'b.prom'),
                                  'machine')
        d.step()
        self.assertEqual(reap(child), -signal.SIGTERM)
        self.assertIn('--metrics-file: cannot write', sink.text())


class DecisionRuleTest(unittest.TestCase):
    """The rule label of a kill: one place names every decision."""

    def test_rules(self):
        th = bustd.compute_thresholds(settings('/proc'), 8 * GIB, 8 * GIB)
        th_noswap = bustd.compute_thresholds(settings('/proc'), 8 * GIB, 0)
        cases = [
            ('enough memory', reading(avail=6 * GIB), th_noswap, None),
            ('memory, no swap', reading(avail=700 * MIB), th_noswap, 'memory'),
            ('memory, no swap, kill', reading(avail=100 * MIB), th_noswap, 'memory'),
            ('memory and swap low', reading(avail=700 * MIB, swap_total=8 * GIB,
                                            swap_free=100 * MIB), th, 'swap'),
            ('swap plenty: nothing', reading(avail=700 * MIB, swap_total=8 * GIB,
                                             swap_free=4 * GIB), th, None),
            ('pressure', reading(avail=GIB, psi=50.0), th_noswap, 'pressure'),
            # With swap, the thrashing rule (no trend here) tells a burst from a leak.
            ('pressure, swap plenty', reading(avail=700 * MIB, swap_total=8 * GIB,
                                              swap_free=4 * GIB, psi=50.0), th, None),
        ]
        for why, r, t, expected in cases:
            with self.subTest(why=why):
                self.assertEqual(bustd.decision_rule(r, t), expected)
                self.assertIn(expected, (None,) + bustd.KILL_RULES)



# ----------------------------------------------------------------------------
# --install / --uninstall into a temporary root
# ----------------------------------------------------------------------------

OPTIONS = ('-m', '15,8', '-u', 'sshd|postgres', '--prefer', '^(chrome|firefox)$')


def tree(root):
    """Return {relative path: (kind, mode or link target)} of everything under root."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(directory, d))]:
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                found[rel] = ('link', os.readlink(path))
            else:
                found[rel] = ('file', stat.S_IMODE(os.stat(path).st_mode))
    return found


class stderr_to(object):
    """Context: file descriptor 2 goes to path (bustd writes errors there with os.write)."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        self.saved = os.dup(2)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 2)
        os.close(fd)
        return lambda: read_text(self.path)

    def __exit__(self, *exc):
        os.dup2(self.saved, 2)
        os.close(self.saved)


class InstallTest(TempDirTest):
    """Black-box --install/--uninstall runs into a temporary --root, one per init system."""

    EXPECTED = {
        'systemd': {
            'usr/local/sbin/bustd': ('file', 0o755),
            'etc/systemd/system/bustd.service': ('file', 0o644),
            'etc/default/bustd': ('file', 0o644),
            'etc/systemd/system/multi-user.target.wants/bustd.service':
                ('link', '/etc/systemd/system/bustd.service'),
        },
        'openrc': {
            'usr/local/sbin/bustd': ('file', 0o755),
            'etc/init.d/bustd': ('file', 0o755),
            'etc/conf.d/bustd': ('file', 0o644),
            'etc/runlevels/default/bustd': ('link', '/etc/init.d/bustd'),
        },
        'runit': {
            'usr/local/sbin/bustd': ('file', 0o755),
            'etc/sv/bustd/run': ('file', 0o755),
            'etc/sv/bustd/conf': ('file', 0o644),
            'var/service/bustd': ('link', '/etc/sv/bustd'),
        },
        'busybox': {'usr/local/sbin/bustd': ('file', 0o755)},
        'none': {'usr/local/sbin/bustd': ('file', 0o755)},
    }

    def root(self, flavour):
        root = os.path.join(self.tmp, flavour)
        if flavour == 'runit':
            os.makedirs(os.path.join(root, 'var/service'))
        return root

    def install(self, root, *args):
        out = run_cli('--install', '--root', root, *args)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        return out.stdout

    def test_the_unit_is_the_repository_file(self):
        with open(os.path.join(HERE, 'bustd.service')) as f:
            shipped = f.read()
        self.assertEqual(bustd.SYSTEMD_UNIT, shipped)
        out = run_cli('--print-unit')
        self.assertEqual((out.returncode, out.stdout), (0, shipped))
        with open(os.path.join(HERE, 'etc', 'default', 'bustd')) as f:
            self.assertEqual(bustd.OPTIONS_FILE, f.read())

    def test_every_init_system(self):
        with open(BUSTD, 'rb') as f:
            program = f.read()
        for flavour in bustd.INIT_SYSTEMS:
            with self.subTest(flavour=flavour):
                root = self.root(flavour)
                out = self.install(root, '--init', flavour, *OPTIONS)
                found = tree(root)
                self.assertEqual(found, self.EXPECTED[flavour])
                for rel, (kind, _) in found.items():    # every file written is printed
                    self.assertIn(os.path.join(root, rel), out)
                with open(os.path.join(root, 'usr/local/sbin/bustd'), 'rb') as f:
                    self.assertEqual(f.read(), program)
                self.assertIn('not starting anything', out)
                version = subprocess.run([os.path.join(root, 'usr/local/sbin/bustd'),
                                          '--version'], stdout=subprocess.PIPE,
                                         universal_newlines=True)
                self.assertEqual(version.stdout.strip(), 'bustd ' + bustd.__version__)

    def test_options_reach_each_init_system(self):
        for flavour, rel, line in (
                ('systemd', 'etc/default/bustd',
                 'BUSTD_ARGS="-m 15,8 -u sshd|postgres --prefer ^(chrome|firefox)$"'),
                ('openrc', 'etc/conf.d/bustd',
                 'BUSTD_ARGS="-m 15,8 -u \'sshd|postgres\' --prefer \'^(chrome|firefox)$\'"'),
                ('runit', 'etc/sv/bustd/conf',
                 'BUSTD_ARGS="-m 15,8 -u sshd|postgres --prefer ^(chrome|firefox)$"')):
            with self.subTest(flavour=flavour):
                root = self.root(flavour)
                self.install(root, '--init', flavour, *OPTIONS)
                self.assertIn('\n' + line + '\n', read_text(os.path.join(root, rel)))
        for flavour, prefix in (('busybox', '::respawn:/usr/local/sbin/bustd --no-daemon '),
                                ('none', '/usr/local/sbin/bustd --pidfile /run/bustd.pid ')):
            with self.subTest(flavour=flavour):
                out = self.install(self.root(flavour), '--init', flavour, *OPTIONS)
                self.assertIn("-m 15,8 -u 'sshd|postgres' --prefer '^(chrome|firefox)$'\n", out)
                self.assertIn(prefix, out)

    def test_the_options_survive_the_shells_that_read_them(self):
        # What each init system's shell makes of the written options: bustd's argv.
        root = self.root('openrc')
        self.install(root, '--init', 'openrc', *OPTIONS)
        script = ('. %s/etc/conf.d/bustd; command_args="--no-daemon ${BUSTD_ARGS}"; '
                  'eval set -- $command_args; for a in "$@"; do printf "%%s\\n" "$a"; done'
                  % root)
        out = subprocess.run(['sh', '-c', script], cwd=self.tmp, stdout=subprocess.PIPE,
                             universal_newlines=True).stdout
        self.assertEqual(out.split('\n')[:-1], ['--no-daemon'] + list(OPTIONS))
        root = self.root('runit')
        self.install(root, '--init', 'runit', *OPTIONS + ('-u', 'sshd*'))
        run = read_text(os.path.join(root, 'etc/sv/bustd/run')).replace(
            'exec /usr/local/sbin/bustd', 'for a in').replace(' 2>&1', '; do printf "%s\\n" "$a"; done')
        open(os.path.join(self.tmp, 'sshd-lookalike'), 'w').close()    # a glob would match it
        out = subprocess.run(['sh', '-c', run], cwd=os.path.join(root, 'etc/sv/bustd'),
                             stdout=subprocess.PIPE, universal_newlines=True).stdout
        self.assertEqual(out.split('\n')[:-1], ['--no-daemon', '--log-file', '/var/log/bustd.log']
                         + list(OPTIONS) + ['-u', 'sshd*'])

    def test_scripts_are_valid_shell(self):
        root = self.root('openrc')
        self.install(root, '--init', 'openrc')
        root_runit = self.root('runit')
        self.install(root_runit, '--init', 'runit')
        for path in (os.path.join(root, 'etc/init.d/bustd'),
                     os.path.join(root_runit, 'etc/sv/bustd/run')):
            with self.subTest(path=path):
                out = subprocess.run(['sh', '-n', path], stderr=subprocess.PIPE,
                                     universal_newlines=True)
                self.assertEqual((out.returncode, out.stderr), (0, ''))

    def test_second_install_upgrades_in_place_and_keeps_the_options(self):
        for flavour, options in (('systemd', 'etc/default/bustd'),
                                 ('openrc', 'etc/conf.d/bustd'), ('runit', 'etc/sv/bustd/conf')):
            with self.subTest(flavour=flavour):
                root = self.root(flavour)
                self.install(root, '--init', flavour, '-m', '15,8')
                bin_path = os.path.join(root, 'usr/local/sbin/bustd')
                with open(bin_path, 'wb') as f:
                    f.write(b'old version\n')
                first = read_text(os.path.join(root, options))
                out = self.install(root, '--init', flavour, '-m', '20,10')
                self.assertEqual(tree(root), self.EXPECTED[flavour])        # no temp files left
                with open(bin_path, 'rb') as f, open(BUSTD, 'rb') as g:
                    self.assertEqual(f.read(), g.read())                 # upgraded
                self.assertEqual(read_text(os.path.join(root, options)), first)   # kept
                self.assertIn('kept %s' % os.path.join(root, options), out)
                self.assertIn('your options were NOT written there', out)

    def test_uninstall_removes_what_install_wrote(self):
        for flavour in bustd.INIT_SYSTEMS:
            with self.subTest(flavour=flavour):
                root = self.root(flavour)
                mine = os.path.join(root, 'etc/keep-me')
                os.makedirs(os.path.dirname(mine), exist_ok=True)
                open(mine, 'w').close()
                self.install(root, '--init', flavour, *OPTIONS)
                out = run_cli('--uninstall', '--root', root, '--init', flavour)
                self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
                self.assertEqual(tree(root), {'etc/keep-me': ('file', 0o644)})
                for rel in self.EXPECTED[flavour]:
                    self.assertIn('remove %s' % os.path.join(root, rel), out.stdout)

    def test_uninstall_leaves_edited_files_and_says_so(self):
        root = self.root('systemd')
        self.install(root, '--init', 'systemd', '-m', '15,8')
        options = os.path.join(root, 'etc/default/bustd')
        with open(options, 'a') as f:
            f.write('# my note\n')
        unit = os.path.join(root, 'etc/systemd/system/bustd.service')
        with open(unit, 'a') as f:
            f.write('# edited\n')
        out = run_cli('--uninstall', '--root', root, '--init', 'systemd')
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(sorted(tree(root)), ['etc/default/bustd',
                                              'etc/systemd/system/bustd.service'])
        self.assertIn('left %s' % options, out.stdout)
        self.assertIn('left %s' % unit, out.stdout)

    def test_uninstall_leaves_a_runit_directory_with_files_of_the_admins(self):
        # runit's usual log service: /etc/sv/bustd/log/run, added by the admin.
        root = self.root('runit')
        self.install(root, '--init', 'runit')
        os.makedirs(os.path.join(root, 'etc/sv/bustd/log'))
        with open(os.path.join(root, 'etc/sv/bustd/log/run'), 'w') as f:
            f.write('#!/bin/sh\nexec svlogd -tt /var/log/bustd\n')
        os.makedirs(os.path.join(root, 'etc/sv/bustd/supervise'))    # runsv's, removed
        open(os.path.join(root, 'etc/sv/bustd/supervise/stat'), 'w').close()
        out = run_cli('--uninstall', '--root', root, '--init', 'runit')
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertEqual(tree(root), {'etc/sv/bustd/log/run': ('file', 0o644)})
        self.assertIn('left %s/etc/sv/bustd: it holds log, not written by --install'
                      % root, out.stdout)
        self.assertIn('remove %s/usr/local/sbin/bustd' % root, out.stdout)

    def test_uninstall_leaves_a_program_it_did_not_write(self):
        for flavour in ('systemd', 'none'):
            with self.subTest(flavour=flavour):
                root = self.root(flavour)
                other = os.path.join(root, 'usr/local/sbin/bustd')
                os.makedirs(os.path.dirname(other))
                with open(other, 'w') as f:
                    f.write('#!/bin/sh\nexec /opt/rust-bustd/bustd "$@"\n')
                out = run_cli('--uninstall', '--root', root, '--init', flavour)
                self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
                self.assertEqual(read_text(other), '#!/bin/sh\nexec /opt/rust-bustd/bustd "$@"\n')
                self.assertIn('left %s: it is not a bustd.py that --install wrote' % other,
                              out.stdout)
                self.assertNotIn('remove %s' % other, out.stdout)

    def test_uninstall_reports_the_options_it_removes(self):
        root = self.root('systemd')
        self.install(root, '--init', 'systemd', '-m', '15,8')
        out = run_cli('--uninstall', '--root', root, '--init', 'systemd')
        self.assertIn('options were: BUSTD_ARGS="-m 15,8"', out.stdout)

    def test_dry_run_only_prints(self):
        for flavour in bustd.INIT_SYSTEMS:
            with self.subTest(flavour=flavour):
                root = self.root(flavour)
                before = tree(root)
                out = self.install(root, '--init', flavour, '--dry-run')
                self.assertEqual(tree(root), before)
                for rel, (kind, _) in self.EXPECTED[flavour].items():
                    self.assertIn('would %s %s' % ('link' if kind == 'link' else 'write',
                                                   os.path.join(root, rel)), out)

    def test_detects_the_init_system(self):
        cases = [
            (('run/systemd/system/', 'sbin/openrc-run'), 'systemd'),
            (('run/openrc/', 'lib/systemd/systemd'), 'openrc'),
            (('run/runit/', 'lib/systemd/systemd'), 'runit'),
            (('usr/lib/systemd/systemd',), 'systemd'),
            (('sbin/openrc-run', 'etc/inittab'), 'openrc'),
            (('usr/bin/runsvdir', 'etc/inittab'), 'runit'),
            (('etc/inittab',), 'busybox'),
            ((), 'none'),
        ]
        for i, (paths, expected) in enumerate(cases):
            with self.subTest(paths=paths):
                root = os.path.join(self.tmp, 'detect%d' % i)
                os.makedirs(root)
                for rel in paths:
                    path = os.path.join(root, rel)
                    os.makedirs(os.path.dirname(path.rstrip('/')), exist_ok=True)
                    if rel.endswith('/'):
                        os.makedirs(path)
                    else:
                        open(path, 'w').close()
                self.assertEqual(bustd.detect_init(root), expected)
                out = self.install(root, '--dry-run')
                self.assertIn('install (dry run) for %s into %s' % (expected, root), out)

    def test_live_plans_run_the_init_systems_commands(self):
        cases = [
            ('systemd', ['systemctl daemon-reload', 'systemctl enable bustd',
                         'systemctl restart bustd']),
            ('openrc', ['rc-update add bustd default', 'rc-service bustd restart']),
            ('none', ["/usr/local/sbin/bustd --pidfile /run/bustd.pid -m 15,8 -u "
                      "'sshd|postgres'"]),
        ]
        for flavour, commands in cases:
            with self.subTest(flavour=flavour):
                steps = bustd.install_plan(flavour, '/', ('-m', '15,8', '-u', 'sshd|postgres'),
                                           b'program')
                out = io.StringIO()
                self.assertEqual(bustd.run_install_steps(steps, True, out), 0)
                ran = [line[len('would run: '):] for line in out.getvalue().split('\n')
                       if line.startswith('would run: ')]
                self.assertEqual(ran, commands)

    def test_a_failing_command_is_exit_1(self):
        root = self.root('systemd')
        steps = [bustd.InstallStep('write', os.path.join(root, 'a'), 'x'),
                 bustd.InstallStep('run', argv=['systemctl', 'daemon-reload']),
                 bustd.InstallStep('write', os.path.join(root, 'b'), 'x')]
        out = io.StringIO()
        status = bustd.run_install_steps(steps, False, out, run=lambda argv: 1)
        self.assertEqual(status, 1)
        self.assertEqual(sorted(tree(root)), ['a'])
        self.assertIn('failed: systemctl exited with status 1', out.getvalue())

    def test_output_that_fails_does_not_stop_an_install_half_done(self):
        # `bustd --install | head -1`: the old daemon stopped, the new one never
        # started, the machine without an OOM killer.
        root = self.root('systemd')

        class Closed(object):       # a reader that read one line and left
            def __init__(self):
                self.lines = 0

            def write(self, text):
                self.lines += 1
                if self.lines > 1:
                    raise bustd.OutputFailed(OSError(errno.EPIPE, 'Broken pipe'))

            def flush(self):
                pass
        ran = []
        steps = [bustd.InstallStep('write', os.path.join(root, 'a'), 'x'),
                 bustd.InstallStep('run', argv=['systemctl', 'restart', 'bustd']),
                 bustd.InstallStep('write', os.path.join(root, 'b'), 'x')]
        with self.assertRaises(bustd.OutputFailed):
            bustd.run_install_steps(steps, False, Closed(), run=lambda argv: ran.append(argv) or 0)
        self.assertEqual(sorted(tree(root)), ['a', 'b'])
        self.assertEqual(ran, [['systemctl', 'restart', 'bustd']])
        # A step that fails after the output did: exit 1 (the install failed).
        with self.assertRaises(bustd.OutputFailed) as caught:
            bustd.run_install_steps(steps, False, Closed(), run=lambda argv: 1)
        self.assertEqual(caught.exception.status, 1)
        # A dry run has done nothing: it stops at once.
        with self.assertRaises(bustd.OutputFailed):
            bustd.run_install_steps(steps, True, Closed())
        # End to end: exit as `--list | head` does, the install complete.
        out = subprocess.run('"%s" "%s" --install --root "%s" --init systemd | head -1'
                             % (sys.executable, BUSTD, root), shell=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        self.assertEqual(out.stderr, b'')
        self.assertIn('etc/systemd/system/bustd.service', tree(root))
        # ... and when a step fails too: exit 1, the failure on stderr, no error at exit.
        blocked = self.root('none')
        os.makedirs(os.path.join(blocked, 'usr/local/sbin/bustd'))   # a directory: unwritable
        env = dict(os.environ)
        env.pop('PYTHONUNBUFFERED', None)
        out = subprocess.run(['bash', '-c', '"$@" | head -1 > /dev/null; exit ${PIPESTATUS[0]}',
                              'sh', sys.executable, BUSTD, '--install', '--root', blocked,
                              '--init', 'none'], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env, timeout=60)
        self.assertEqual(out.returncode, 1, out.stderr)
        self.assertNotIn(b'Exception', out.stderr)
        self.assertNotIn(b'Traceback', out.stderr)

    def test_a_symlink_in_the_tree_never_leads_outside_it(self):
        # An image's absolute symlink means its own /etc, but here it is the host's.
        host = os.path.join(self.tmp, 'host')
        os.makedirs(host)
        for action in ('--install', '--uninstall'):
            for extra in ((), ('--dry-run',)):
                with self.subTest(action=action, extra=extra):
                    root = os.path.join(self.tmp, 'image' + action + ''.join(extra))
                    os.makedirs(os.path.join(root, 'etc'))
                    os.symlink(host, os.path.join(root, 'etc', 'systemd'))
                    if action == '--uninstall':
                        os.makedirs(os.path.join(host, 'system'), exist_ok=True)
                        with open(os.path.join(host, 'system', 'bustd.service'), 'w') as f:
                            f.write(bustd.SYSTEMD_UNIT)
                    out = run_cli(action, '--root', root, '--init', 'systemd', *extra)
                    self.assertEqual(out.returncode, 1, out.stdout + out.stderr)
                    self.assertIn('--root %s: %s/etc/systemd/system' % (root, root), out.stdout)
                    self.assertIn('resolves to %s/system' % host, out.stdout)
                    self.assertIn('outside the tree (a symlink in it); not touching it',
                                  out.stdout)
                    self.assertEqual(sorted(tree(host)), [] if action == '--install'
                                     else ['system/bustd.service'])

    def test_a_symlink_planted_at_the_temporary_name_is_not_followed(self):
        root = self.root('none')
        target = os.path.join(self.tmp, 'precious')
        with open(target, 'w') as f:
            f.write('precious\n')
        os.makedirs(os.path.join(root, 'usr/local/sbin'))
        os.symlink(target, os.path.join(root, 'usr/local/sbin/bustd.%d.tmp' % os.getpid()))
        out = io.StringIO()
        steps = bustd.install_plan('none', root, (), b'program')
        self.assertEqual(bustd.run_install_steps(steps, False, out), 0)
        self.assertEqual(read_text(target), 'precious\n')
        self.assertEqual(tree(root), {'usr/local/sbin/bustd': ('file', 0o755)})

    def test_refuses_without_root(self):
        for action in ('--install', '--uninstall'):
            with self.subTest(action=action):
                out = io.StringIO()
                with stderr_to(os.path.join(self.tmp, 'stderr')) as err:
                    status = bustd.install_main(bustd.parse_settings([action]), out, euid=1000)
                self.assertEqual(status, 1)
                self.assertIn('%s needs root: run it with sudo' % action, err())
                self.assertEqual(out.getvalue(), '')

    def test_bad_install_command_lines_are_exit_2(self):
        for args, message in (
                (('--install', '-u', 'a b'), 'cannot be written to an options file'),
                (('--install', '-N', '/bin/tr\'ue'), 'argument -N'),
                (('--root', self.tmp), 'only apply with --install'),
                (('--install', '--init', 'upstart'), 'argument --init'),
                (('--install', '--list'), 'choose one')):
            with self.subTest(args=args):
                out = run_cli(*args)
                self.assertEqual(out.returncode, 2, out.stderr)
                self.assertIn(message, out.stderr)

    def test_the_shell_gives_the_daemon_exactly_the_options_given(self):
        # OpenRC and runit source their options files in sh: what it cannot
        # carry unchanged ($$ is the shell's pid) is refused.
        for value in ('a$$', 'x$?', 'a$*', '$!', 'a$#', '$@', 'a$-', 'a$1'):
            with self.subTest(value=value):
                with self.assertRaises(bustd.UsageError):
                    bustd.install_options(['--install', '--prefer', value])
        if not shutil.which('sh'):
            self.skipTest('no sh here')
        given = ['--prefer', '^(a|b)$', '-u', 'a;b', '--avoid', 'a|b&c>d$|e$', '--ignore', '#x*']
        for flavour, conf, expand in (
                ('openrc', 'etc/conf.d/bustd', 'eval set -- $BUSTD_ARGS'),
                ('runit', 'etc/sv/bustd/conf', 'set -f; set -- $BUSTD_ARGS')):
            with self.subTest(flavour=flavour):
                root = self.root(flavour)
                self.install(root, '--init', flavour, *given)
                out = subprocess.run(['sh', '-c', '. "$0"; %s; printf "%%s\\n" "$@"' % expand,
                                      os.path.join(root, conf)], stdout=subprocess.PIPE,
                                     universal_newlines=True)
                self.assertEqual(out.stdout.split('\n')[:-1], given)

    def test_install_options_drop_the_installers_own_flags(self):
        cases = [
            (['--install', '-m', '15', '--root', '/x', '--init=openrc', '-n'], ('-m', '15')),
            (['--inst', '--dry-run', '--root=/x', '-u', 'sshd', '--no-daemon'], ('-u', 'sshd')),
            (['--install', '--metrics-file', '/run/bustd/bustd.prom', '--kill-cgroup'],
             ('--metrics-file', '/run/bustd/bustd.prom', '--kill-cgroup')),
            (['--install', '--prefer', '^(a|b)$'], ('--prefer', '^(a|b)$')),
        ]
        for argv, expected in cases:
            with self.subTest(argv=argv):
                self.assertEqual(bustd.install_options(argv), expected)
        for bad in ('a b', 'it"s', "it's", 'a\\b', '`x`', '$HOME', '${x}', '$(id)'):
            with self.subTest(bad=bad):
                self.assertRaises(bustd.UsageError, bustd.install_options, ['-u', bad])


class StopPidfileTest(TempDirTest):
    """An upgrade without an init system stops the bustd of the pidfile, and only a bustd."""

    def test_stops_the_running_bustd_and_leaves_other_processes(self):
        pidfile = os.path.join(self.tmp, 'bustd.pid')
        d = Daemon('--pidfile', pidfile)
        try:
            self.assertTrue(wait_until(lambda: read_text(pidfile).strip().isdigit()))
            self.assertTrue(bustd.stop_pidfile_bustd(pidfile))
            self.assertIsNotNone(d.proc.poll())
        finally:
            self.assertEqual(d.stop(), 0)
        other = start_victim()
        self.addCleanup(stop, other)
        with open(pidfile, 'w') as f:
            f.write('%d\n' % other.pid)
        self.assertFalse(bustd.stop_pidfile_bustd(pidfile))
        self.assertIsNone(other.poll())

    def test_a_stale_pidfile_naming_a_process_that_mentions_bustd_stops_nothing(self):
        # The pid of a bustd that died without removing its pidfile, now
        # `tail -f /var/log/bustd.log` (or another bustd's pidfile).
        pidfile = os.path.join(self.tmp, 'bustd.pid')
        for args in (('-f', '/var/log/bustd.log'), ('--pidfile', pidfile + '.other'),
                     ('--pidfile=/run/bustd.pid',)):
            with self.subTest(args=args):
                other = start_victim(*args)
                self.addCleanup(stop, other)
                with open(pidfile, 'w') as f:
                    f.write('%d\n' % other.pid)
                self.assertFalse(bustd.stop_pidfile_bustd(pidfile))
                self.assertIsNone(other.poll())
        for text in ('-1', '0'):
            with open(pidfile, 'w') as f:
                f.write(text)
            self.assertFalse(bustd.stop_pidfile_bustd(pidfile))


if __name__ == '__main__':
    unittest.main()
