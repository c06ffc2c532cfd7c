//go:build e2e && race

package e2e

// raceEnabled reports whether the tests run under -race; the gate is then built with -race too.
const raceEnabled = true
