// SPDX-License-Identifier: GPL-2.0
/*
 * /init of the test guest that kernel/run boots under QEMU.
 *
 * Mounts what the KVM selftests need, runs every test listed in /etc/tests
 * (one "NAME PATH LIMIT_SECONDS [ARG]" per line; ARG is the test's one
 * argument) with a time limit, prints one line per test:
 *
 *	TEST-BEGIN <name>
 *	... the test's own output ...
 *	TEST <name> PASS|FAIL|SKIP (exit N) <seconds>s [why]
 *
 * then asks kmemleak for a scan and prints its report between KMEMLEAK-BEGIN
 * and KMEMLEAK-END, prints the taint mask, prints INIT-DONE and powers off.
 * Exit code 4 is the selftests' KSFT_SKIP.  A test killed by a signal is
 * reported as exit 128 + signal, a test over its limit is killed and fails.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define KSFT_SKIP 4
#define KMEMLEAK "/sys/kernel/debug/kmemleak"
/* kmemleak reports nothing younger than this (MSECS_MIN_AGE, 5 s), plus margin. */
#define KMEMLEAK_MIN_AGE 5.5

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_for(double seconds)
{
	struct timespec ts;

	if (seconds <= 0)
		return;
	ts.tv_sec = (time_t)seconds;
	ts.tv_nsec = (long)((seconds - ts.tv_sec) * 1e9);
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

static void mount_fs(const char *src, const char *dir, const char *type)
{
	mkdir(dir, 0755);
	if (mount(src, dir, type, 0, NULL) && errno != EBUSY)
		printf("INIT mount %s on %s: %s\n", type, dir, strerror(errno));
}

static int write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = write(fd, text, strlen(text));
	close(fd);
	return n == (ssize_t)strlen(text) ? 0 : -1;
}

static void cat_file(const char *path)
{
	char buf[4096];
	ssize_t n;
	int fd = open(path, O_RDONLY);

	if (fd < 0) {
		printf("INIT open %s: %s\n", path, strerror(errno));
		return;
	}
	fflush(stdout);
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		fwrite(buf, 1, n, stdout);
	fflush(stdout);
	close(fd);
}

/* Runs one test; returns the time it ended. */
static double run_test(const char *name, const char *path, const char *arg,
		       double limit)
{
	const char *verdict, *why = "";
	double start = now(), end;
	int status, code;
	pid_t pid, done;

	printf("TEST-BEGIN %s\n", name);
	fflush(stdout);
	pid = fork();
	if (pid < 0) {
		printf("TEST %s FAIL (exit 255) 0.000s fork: %s\n", name,
		       strerror(errno));
		return now();
	}
	if (pid == 0) {
		char *argv[] = { (char *)path, (char *)arg, NULL };

		chdir("/tmp");
		execv(path, argv);
		printf("INIT exec %s: %s\n", path, strerror(errno));
		_exit(127);
	}
	for (;;) {
		done = waitpid(pid, &status, WNOHANG);
		if (done == pid)
			break;
		if (done < 0 && errno != EINTR) {
			status = 255 << 8;
			break;
		}
		if (now() - start > limit) {
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			why = " timeout";
			break;
		}
		sleep_for(0.01);
	}
	end = now();
	if (WIFEXITED(status))
		code = WEXITSTATUS(status);
	else if (WIFSIGNALED(status))
		code = 128 + WTERMSIG(status);
	else
		code = 255;
	if (*why)
		verdict = "FAIL";
	else if (code == 0)
		verdict = "PASS";
	else if (code == KSFT_SKIP)
		verdict = "SKIP";
	else
		verdict = "FAIL";
	if (!*why && WIFSIGNALED(status))
		why = " killed by a signal";
	printf("TEST %s %s (exit %d) %.3fs%s\n", name, verdict, code,
	       end - start, why);
	fflush(stdout);
	return end;
}

static void kmemleak_report(double last_alloc)
{
	if (access(KMEMLEAK, F_OK)) {
		printf("INIT no %s\n", KMEMLEAK);
		return;
	}
	/*
	 * An object is reported only when found unreferenced, with its contents
	 * unchanged since the scan before, and older than the minimum age: the
	 * first scan records the checksums, the second one reports.
	 */
	if (write_file(KMEMLEAK, "scan"))
		printf("INIT kmemleak scan: %s\n", strerror(errno));
	sleep_for(KMEMLEAK_MIN_AGE - (now() - last_alloc));
	if (write_file(KMEMLEAK, "scan"))
		printf("INIT kmemleak scan: %s\n", strerror(errno));
	printf("KMEMLEAK-BEGIN\n");
	cat_file(KMEMLEAK);
	printf("KMEMLEAK-END\n");
}

int main(void)
{
	char name[128], path[256], arg[128], line[512];
	double limit, last = now();
	FILE *list;

	setvbuf(stdout, NULL, _IOLBF, 0);
	mount_fs("devtmpfs", "/dev", "devtmpfs");
	mount_fs("proc", "/proc", "proc");
	mount_fs("sysfs", "/sys", "sysfs");
	mount_fs("debugfs", "/sys/kernel/debug", "debugfs");
	mount_fs("tmpfs", "/dev/shm", "tmpfs");
	mount_fs("tmpfs", "/tmp", "tmpfs");
	printf("INIT up %.3fs\n", now());

	list = fopen("/etc/tests", "r");
	if (!list) {
		printf("INIT /etc/tests: %s\n", strerror(errno));
	} else {
		while (fgets(line, sizeof(line), list)) {
			arg[0] = 0;
			if (sscanf(line, "%127s %255s %lf %127s", name, path,
				   &limit, arg) < 3)
				continue;
			last = run_test(name, path, arg[0] ? arg : NULL, limit);
		}
		fclose(list);
	}

	kmemleak_report(last);
	printf("TAINTED ");
	cat_file("/proc/sys/kernel/tainted");
	printf("INIT-DONE\n");
	fflush(stdout);
	sync();
	reboot(RB_POWER_OFF);
	reboot(RB_AUTOBOOT);
	return 0;
}
