//go:build !unix

package frames

const rawReads = false

func (r *Reader) readRaw() error { panic("unreachable") }

func (r *Reader) readFd(uintptr) bool { panic("unreachable") }
