//go:build unix

package frames

import (
	"io"
	"os"
	"syscall"
	"unsafe"
)

// RawIO says whether sockets are read and written directly here (the
// Reader of ResetSocket, ReadSocket, WriteReady).
const RawIO = true

// readReady is ReadReady for a socket: one read(2) on its descriptor, not
// through the runtime's poller (its lock and state reset cost more than
// the call itself on a busy relay), into the free part of the pooled
// buffer, which compact puts after the buffered bytes. ResetSocket's
// caller keeps the descriptor open while r may read it.
func (r *Reader) readReady() error {
	r.compact()
	buf := *r.big
	m := len(r.data)
	n, err := ReadSocket(r.fd, buf[m:])
	if err != nil {
		r.Release()
		return err
	}
	r.data = buf[:m+n]
	r.short = n < len(buf)-m
	r.got.Add(int64(n))
	return nil
}

// readNonblock reads a non-blocking descriptor without telling the
// scheduler about a system call: the call returns at once (EAGAIN when
// nothing is there), so there is no thread to hand the processor over from,
// and entering a scheduled system call would also wake the runtime's
// monitor thread each time the gate had been idle.
func readNonblock(fd uintptr, p []byte) (int, error) {
	n, e := sockCall(sysRecvfrom, syscall.SYS_READ, fd, p)
	if e != 0 {
		return 0, e
	}
	return n, nil
}

// sockCall makes the socket call sock (recvfrom, sendto) with p and no
// address on fd, or the plain call plain (read, write) when fd is not a
// socket (ENOTSOCK). On Linux read(2) and write(2) pass through the file
// layer first (the position lock, the write hooks), a tenth of the
// kernel's time in the gate's system calls at 8000 busy connections.
func sockCall(sock, plain, fd uintptr, p []byte) (int, syscall.Errno) {
	buf := uintptr(unsafe.Pointer(unsafe.SliceData(p)))
	n, _, e := syscall.RawSyscall6(sock, fd, buf, uintptr(len(p)), 0, 0, 0)
	if e == syscall.ENOTSOCK {
		n, _, e = syscall.RawSyscall(plain, fd, buf, uintptr(len(p)))
	}
	return int(n), e
}

// WriteReady writes as much of p to the socket fd as its buffer takes now,
// without waiting and without telling the scheduler about a system call
// (see readNonblock), and returns how much that was: less than len(p) with
// a nil error means the buffer is full, and the caller waits (with a
// blocking write) for the rest. The caller keeps fd open during the call.
func WriteReady(fd int, p []byte) (int, error) {
	n := 0
	for n < len(p) {
		k, e := sockCall(sysSendto, syscall.SYS_WRITE, uintptr(fd), p[n:])
		switch e {
		case 0:
			n += k
		case syscall.EINTR:
		case syscall.EAGAIN:
			return n, nil
		default:
			return n, os.NewSyscallError("write", e)
		}
	}
	return n, nil
}

// ReadSocket reads what the socket fd has ready into p, without waiting and
// without telling the scheduler about a system call (see readNonblock). It
// returns ErrWouldBlock when nothing is there and io.EOF when the peer
// closed. The caller keeps fd open during the call.
func ReadSocket(fd int, p []byte) (int, error) {
	for {
		n, err := readNonblock(uintptr(fd), p)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return 0, ErrWouldBlock
		case err != nil:
			return 0, os.NewSyscallError("read", err)
		case n == 0 && len(p) > 0:
			return 0, io.EOF
		}
		return n, nil
	}
}
