//go:build !unix

package frames

import "syscall"

// rawIO is false here: a Reader only reads its source with blocking reads.
const rawIO = false

func (r *Reader) readReady() error { return ErrNotSocket }

// RawWriter is not available here; callers check for a raw connection
// first, which they never have.
type RawWriter struct{}

func NewRawWriter() *RawWriter { return &RawWriter{} }

func (w *RawWriter) WriteReady(syscall.RawConn, []byte) (int, error) { return 0, nil }
