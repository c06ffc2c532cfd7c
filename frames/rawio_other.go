//go:build !unix

package frames

import "syscall"

const rawReads = false

func (r *Reader) readRaw() error { panic("unreachable") }

func (r *Reader) readFd(uintptr) bool { panic("unreachable") }

// RawWriter is not available here: Reader.Raw is always nil.
type RawWriter struct{}

func NewRawWriter() *RawWriter { return &RawWriter{} }

func (w *RawWriter) Write(syscall.RawConn, []byte) error { panic("unreachable") }
