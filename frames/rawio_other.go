//go:build !unix

package frames

// RawIO is false here: a Reader only reads its source with blocking reads,
// and ReadSocket and WriteReady do nothing.
const RawIO = false

func (r *Reader) readReady() error { return ErrNotSocket }

// WriteReady is not available here; callers check for a descriptor first,
// which they never have.
func WriteReady(int, []byte) (int, error) { return 0, nil }

// ReadSocket is not available here, as WriteReady.
func ReadSocket(int, []byte) (int, error) { return 0, ErrNotSocket }
