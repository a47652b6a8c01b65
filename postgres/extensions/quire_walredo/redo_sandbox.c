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
 * no process started.  Three allowed calls are checked on their arguments
 * too, and a refusal kills the process as an unlisted call does: kill()
 * only signals the process itself, and mmap() and mprotect() never make
 * memory executable, so that a redo routine subverted by a crafted record
 * can neither signal the pageserver (or anything else its user owns) nor
 * run code it wrote.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <fcntl.h>
#include <signal.h>
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
 * The filter reads an argument's low 32 bits, which the kernel takes as the
 * whole of an int argument (a pid, and the protection bits it tests): on a
 * little-endian machine they come first.
 */
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the redo sandbox reads arguments as a little-endian machine lays them out"
#endif
#define ARG_LOW(i) (offsetof(struct seccomp_data, args) + (i) * sizeof(uint64))

/*
 * What the process still does after start-up: read requests, write replies
 * and log lines, manage memory (malloc, palloc, mremap of large chunks),
 * sleep and wake in spinlock back-off and semaphores (futex), read clocks
 * (timestamps in log lines), handle signals, and exit (which detaches and
 * removes the System V interlock segment).  kill, mmap and mprotect are
 * allowed too, on conditions (redo_enter_sandbox).
 */
static const int allowed_syscalls[] = {
	__NR_read, __NR_write, __NR_writev, __NR_close, __NR_lseek,
	__NR_brk, __NR_munmap, __NR_mremap, __NR_madvise,
	__NR_futex, __NR_nanosleep, __NR_clock_nanosleep, __NR_sched_yield,
	__NR_clock_gettime, __NR_gettimeofday, __NR_getpid, __NR_gettid,
	__NR_getrandom,
	__NR_rt_sigaction, __NR_rt_sigprocmask, __NR_rt_sigreturn,
	__NR_shmdt, __NR_shmctl,
	__NR_exit, __NR_exit_group,
#ifdef __NR_select
	__NR_select,
#endif
	__NR_pselect6,
};

#define N_ALLOWED lengthof(allowed_syscalls)

/*
 * Instructions besides the allow-list's two per call: four to check the
 * architecture and load the call number, five for kill, six for mmap and
 * mprotect, and the final refusal.
 */
#define N_FIXED 16

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

/*
 * With READ_IMPLIES_EXEC in its personality (an executable built without a
 * non-executable stack marking) every readable mapping would be executable
 * whatever the filter sees; the flag is dropped first.
 */
static void
drop_read_implies_exec(void)
{
	int			persona = personality(0xffffffff);

	if (persona == -1)
		ereport(FATAL,
				(errmsg("could not read the redo process's personality: %m")));
	if ((persona & READ_IMPLIES_EXEC) != 0 &&
		personality((unsigned long) persona & ~(unsigned long) READ_IMPLIES_EXEC) == -1)
		ereport(FATAL,
				(errmsg("could not clear READ_IMPLIES_EXEC for the redo sandbox: %m")));
}

/*
 * The filter, in order: a foreign architecture is killed; kill() passes
 * only when its pid argument is this process's own (Postgres signals itself
 * through kill(MyProcPid, ...) when a latch is set while it waits; no other
 * process exists to signal, and pid 0 or -1 would reach the pageserver's
 * process group or every process of the user); mmap() and mprotect() pass
 * unless they ask for PROT_EXEC (the process maps only data after start-up);
 * then the allow-list; anything else is killed.
 */
void
redo_enter_sandbox(void)
{
	struct sock_filter filter[N_FIXED + 2 * N_ALLOWED];
	struct sock_fprog prog;
	uint32		self = (uint32) getpid();
	int			n = 0;

	close_inherited_descriptors();
	drop_read_implies_exec();

#define EMIT(insn) (filter[n++] = (struct sock_filter) insn)
	EMIT(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)));
	EMIT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, REDO_AUDIT_ARCH, 1, 0));
	EMIT(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
	EMIT(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)));

	/* kill(pid, sig): only pid == getpid(). */
	EMIT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_kill, 0, 4));
	EMIT(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LOW(0)));
	EMIT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, self, 0, 1));
	EMIT(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
	EMIT(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));

	/* mmap(addr, len, prot, ...) and mprotect(addr, len, prot): no PROT_EXEC. */
	EMIT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_mmap, 1, 0));
	EMIT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_mprotect, 0, 4));
	EMIT(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG_LOW(2)));
	EMIT(BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, PROT_EXEC, 0, 1));
	EMIT(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
	EMIT(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));

	/* The accumulator still holds the call number here. */
	for (int i = 0; i < (int) N_ALLOWED; i++)
	{
		EMIT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, allowed_syscalls[i], 0, 1));
		EMIT(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
	}
	EMIT(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
#undef EMIT
	Assert(n == (int) lengthof(filter));

	prog.len = (unsigned short) n;
	prog.filter = filter;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
		ereport(FATAL,
				(errmsg("could not set no_new_privs for the redo sandbox: %m")));
	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
		ereport(FATAL,
				(errmsg("could not install the redo process's seccomp filter: %m")));
}

/*
 * The `X` request (tests only): makes one call the sandbox decides on and
 * returns 0 if it succeeded or its errno; a refused call never returns.
 * Signal 0 makes kill() a permission check that delivers nothing, so a
 * probe that got through harms no process.
 */
int
redo_sandbox_probe(char what, uint32 arg)
{
	int			result = 0;

	switch (what)
	{
		case SANDBOX_PROBE_OPEN:
			{
				int			fd = open("/", O_RDONLY);

				if (fd < 0)
					return errno;
				close(fd);
				return 0;
			}
		case SANDBOX_PROBE_KILL:
			return kill((pid_t) arg, 0) == 0 ? 0 : errno;
		case SANDBOX_PROBE_MMAP:
		case SANDBOX_PROBE_MPROTECT:
			{
				int			prot = what == SANDBOX_PROBE_MMAP ?
					(int) arg : PROT_READ | PROT_WRITE;
				void	   *p = mmap(NULL, BLCKSZ, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

				if (p == MAP_FAILED)
					return errno;
				if (what == SANDBOX_PROBE_MPROTECT && mprotect(p, BLCKSZ, (int) arg) != 0)
					result = errno;
				munmap(p, BLCKSZ);
				return result;
			}
		default:
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("unknown sandbox probe 0x%02X", (uint8) what)));
	}
	return result;
}
