//go:build unix

package frames

import (
	"os"
	"syscall"
	"testing"
)

// TestRawIOOnAPipe: a descriptor that is not a socket is read and written
// too (recvfrom and sendto refuse it), and a read with nothing there is
// ErrWouldBlock.
func TestRawIOOnAPipe(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	rfd, wfd := int(r.Fd()), int(w.Fd())
	for _, fd := range []int{rfd, wfd} {
		if err := syscall.SetNonblock(fd, true); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := WriteReady(wfd, []byte("hello")); n != 5 || err != nil {
		t.Fatalf("WriteReady to a pipe: %d, %v", n, err)
	}
	p := make([]byte, 16)
	if n, err := ReadSocket(rfd, p); err != nil || string(p[:n]) != "hello" {
		t.Fatalf("ReadSocket of a pipe: %q, %v", p[:n], err)
	}
	if _, err := ReadSocket(rfd, p); err != ErrWouldBlock {
		t.Fatalf("ReadSocket of an empty pipe: %v, want ErrWouldBlock", err)
	}
}
