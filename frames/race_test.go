//go:build race

package frames

// raceEnabled: the race detector makes sync.Pool drop buffers at random,
// so allocation counts are checked by the run without it (make unit).
const raceEnabled = true
