// A file-system fault injector for integration tests, loaded into the
// server with LD_PRELOAD: while the control file names an errno, the
// system calls through which SQLite writes (pwrite64, write, ftruncate64,
// fdatasync, and open64 for writing) fail with that errno for files under
// a directory, the way the kernel answers on a file system remounted
// read-only (EROFS) or failing (EIO).  A real read-only remount is refused
// while the server holds the database open for writing, hence this.
//
//   QC_FAULT_DIR=/path/to/dir       files affected (the database's directory)
//   QC_FAULT_CONTROL=/path/to/file  holds "EROFS" or "EIO"; absent or empty: no fault
//
// Never linked into qryptchatd; built as build/tests/faultfs/libqcfault.so.
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

// The errno to fail with for a write to `fd` (or `path`), or 0.
int fault_for(int fd, const char *path)
{
	const char *dir = getenv("QC_FAULT_DIR");
	const char *control = getenv("QC_FAULT_CONTROL");
	if (!dir || !control || !*dir)
		return 0;
	// Raw system calls: the wrappers below must not recurse.
	int cfd = static_cast<int>(syscall(SYS_openat, AT_FDCWD, control, O_RDONLY | O_CLOEXEC));
	if (cfd < 0)
		return 0;
	char what[16] = {0};
	long n = syscall(SYS_read, cfd, what, sizeof what - 1);
	syscall(SYS_close, cfd);
	if (n <= 0)
		return 0;
	int err = strncmp(what, "EROFS", 5) == 0 ? EROFS : strncmp(what, "EIO", 3) == 0 ? EIO : 0;
	if (!err)
		return 0;
	char target[4096];
	if (!path) {
		char link[64];
		snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
		// readlinkat: arm64 has no readlink system call.
		long len = syscall(SYS_readlinkat, AT_FDCWD, link, target, sizeof target - 1);
		if (len <= 0)
			return 0;
		target[len] = '\0';
		path = target;
	}
	size_t dl = strlen(dir);
	return strncmp(path, dir, dl) == 0 && (path[dl] == '/' || path[dl] == '\0') ? err : 0;
}

template <typename F> F real(const char *name)
{
	return reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
}

} // namespace

extern "C" {

ssize_t pwrite64(int fd, const void *buf, size_t count, off64_t offset)
{
	if (int e = fault_for(fd, nullptr)) {
		errno = e;
		return -1;
	}
	static auto f = real<ssize_t (*)(int, const void *, size_t, off64_t)>("pwrite64");
	return f(fd, buf, count, offset);
}

ssize_t write(int fd, const void *buf, size_t count)
{
	if (int e = fault_for(fd, nullptr)) {
		errno = e;
		return -1;
	}
	static auto f = real<ssize_t (*)(int, const void *, size_t)>("write");
	return f(fd, buf, count);
}

int ftruncate64(int fd, off64_t length)
{
	if (int e = fault_for(fd, nullptr)) {
		errno = e;
		return -1;
	}
	static auto f = real<int (*)(int, off64_t)>("ftruncate64");
	return f(fd, length);
}

int fdatasync(int fd)
{
	if (int e = fault_for(fd, nullptr)) {
		errno = e;
		return -1;
	}
	static auto f = real<int (*)(int)>("fdatasync");
	return f(fd);
}

int open64(const char *path, int flags, ...)
{
	mode_t mode = 0;
	if (flags & (O_CREAT | O_TMPFILE)) {
		va_list ap;
		va_start(ap, flags);
		mode = static_cast<mode_t>(va_arg(ap, int));
		va_end(ap);
	}
	if ((flags & (O_WRONLY | O_RDWR | O_CREAT)) && path[0] == '/')
		if (int e = fault_for(-1, path)) {
			errno = e;
			return -1;
		}
	static auto f = real<int (*)(const char *, int, ...)>("open64");
	return f(path, flags, mode);
}

} // extern "C"
