/*-------------------------------------------------------------------------
 *
 * redo_sandbox.c
 *	  Confines the redo process once it has started.
 *
 * The redo process replays WAL records, which come from computes and are
 * therefore untrusted input, through C code that was written for records
 * Postgres produced itself.  After start-up it needs nothing but its pipes
 * and memory, so it closes every descriptor other than stdin, stdout and
 * stderr and installs a seccomp filter that kills the process on any system
 * call outside a short allow-list: no file can be opened, no socket made,
 * no process started.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <stddef.h>
#include <unistd.h>

#include "quire_walredo.h"

#if defined(__x86_64__)
#define REDO_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define REDO_AUDIT_ARCH AUDIT_ARCH_AARCH64
#else
#error "the redo sandbox knows x86_64 and aarch64 only"
#endif

/*
 * What the process still does after start-up: read requests, write replies
 * and log lines, manage memory (malloc, palloc, mremap of large chunks),
 * sleep and wake in spinlock back-off and semaphores (futex), read clocks
 * (timestamps in log lines), handle signals, and exit (which detaches and
 * removes the System V interlock segment).
 */
static const int allowed_syscalls[] = {
	__NR_read, __NR_write, __NR_writev, __NR_close, __NR_lseek,
	__NR_brk, __NR_mmap, __NR_munmap, __NR_mremap, __NR_madvise, __NR_mprotect,
	__NR_futex, __NR_nanosleep, __NR_clock_nanosleep, __NR_sched_yield,
	__NR_clock_gettime, __NR_gettimeofday, __NR_getpid, __NR_gettid,
	__NR_getrandom,
	__NR_rt_sigaction, __NR_rt_sigprocmask, __NR_rt_sigreturn, __NR_kill,
	__NR_shmdt, __NR_shmctl,
	__NR_exit, __NR_exit_group,
#ifdef __NR_select
	__NR_select,
#endif
	__NR_pselect6,
};

#define N_ALLOWED lengthof(allowed_syscalls)

/* Closes every descriptor above stderr. */
static void
close_inherited_descriptors(void)
{
#ifdef SYS_close_range
	if (syscall(SYS_close_range, 3, ~0U, 0) == 0)
		return;
#endif
	{
		struct rlimit lim;
		rlim_t		max_fd = 1024;

		if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY)
			max_fd = lim.rlim_cur;
		for (rlim_t fd = 3; fd < max_fd; fd++)
			close((int) fd);
	}
}

void
redo_enter_sandbox(void)
{
	/* Two instructions of prologue, one test + return per syscall, two of epilogue. */
	struct sock_filter filter[4 + 2 * N_ALLOWED + 1];
	struct sock_fprog prog;
	int			n = 0;

	close_inherited_descriptors();

	filter[n++] = (struct sock_filter)
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
	filter[n++] = (struct sock_filter)
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, REDO_AUDIT_ARCH, 1, 0);
	filter[n++] = (struct sock_filter)
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
	filter[n++] = (struct sock_filter)
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
	for (int i = 0; i < (int) N_ALLOWED; i++)
	{
		filter[n++] = (struct sock_filter)
			BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, allowed_syscalls[i], 0, 1);
		filter[n++] = (struct sock_filter)
			BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
	}
	filter[n++] = (struct sock_filter)
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
	Assert(n == lengthof(filter));

	prog.len = (unsigned short) n;
	prog.filter = filter;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		ereport(FATAL,
				(errmsg("could not set no_new_privs for the redo sandbox: %m")));
	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
		ereport(FATAL,
				(errmsg("could not install the redo process's seccomp filter: %m")));
}
