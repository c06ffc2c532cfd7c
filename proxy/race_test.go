//go:build race

package proxy

// raceEnabled: the race detector makes sync.Pool drop items at random, so
// allocation counts are checked by the run without it (make unit).
const raceEnabled = true
