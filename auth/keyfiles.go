package auth

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// keyFileCheck is how often the key files are looked at by default.
const keyFileCheck = 10 * time.Second

// keyFile is one configured secret or key file.
type keyFile struct {
	path  string
	hmac  bool   // the raw bytes are an HMAC secret; else PEM keys or a JWK (Set)
	field string // the Config field that named it, for a *ConfigError
}

// keyFiles returns c's secret and key files, in that order.
func (c Config) keyFiles() []keyFile {
	var files []keyFile
	for _, p := range c.HMACSecretFiles {
		files = append(files, keyFile{path: p, hmac: true, field: "HMACSecretFiles"})
	}
	for _, p := range c.KeyFiles {
		files = append(files, keyFile{path: p, field: "KeyFiles"})
	}
	return files
}

// fileNote is something worth a warning about a key file that is not an
// error: a short secret, a secret that ends in a newline.
type fileNote struct {
	msg  string
	args []any
}

func logNotes(log *slog.Logger, notes []fileNote) {
	for _, n := range notes {
		log.Warn(n.msg, n.args...)
	}
}

// readKeyFiles reads files. Each file's stamp is taken before it is read,
// so a file replaced during the read shows a new stamp at the next look
// and is read again. The error is a *ConfigError naming the file's field.
func readKeyFiles(files []keyFile) (keys []verifyKey, notes []fileNote, stamps []os.FileInfo, err error) {
	for _, f := range files {
		st, err := os.Stat(f.path)
		if err != nil {
			what := "key file"
			if f.hmac {
				what = "hmac secret"
			}
			return nil, nil, nil, &ConfigError{Field: f.field, Err: fmt.Errorf("%s: %w", what, err)}
		}
		stamps = append(stamps, st)
		if !f.hmac {
			ks, err := loadKeyFile(f.path)
			if err != nil {
				return nil, nil, nil, &ConfigError{Field: f.field, Err: fmt.Errorf("key file %q: %w", f.path, err)}
			}
			keys = append(keys, ks...)
			continue
		}
		secret, err := os.ReadFile(f.path)
		if err != nil {
			return nil, nil, nil, &ConfigError{Field: f.field, Err: fmt.Errorf("hmac secret: %w", err)}
		}
		if len(secret) == 0 {
			return nil, nil, nil, &ConfigError{Field: f.field, Err: fmt.Errorf("hmac secret file %q is empty", f.path)}
		}
		if what := keyLike(secret); what != "" {
			return nil, nil, nil, &ConfigError{Field: f.field, Err: fmt.Errorf("hmac secret file %q holds %s, not a secret: give keys with --jwt-key-file", f.path, what)}
		}
		if len(secret) < 32 {
			notes = append(notes, fileNote{"auth: hmac secret is shorter than 32 bytes", []any{"file", f.path, "bytes", len(secret)}})
		}
		// The bytes are the secret as they are (a binary secret may end in
		// 0x0a), but `echo secret > file` and most editors add a newline
		// that the issuer's copy of the secret usually lacks.
		if bytes.HasSuffix(secret, []byte("\n")) {
			notes = append(notes, fileNote{"auth: hmac secret file ends in a newline, which is part of the secret; tokens signed without it fail (write it with printf '%s' or echo -n)",
				[]any{"file", f.path, "bytes", len(secret)}})
		}
		keys = append(keys, verifyKey{fam: famHMAC, raw: secret})
	}
	return keys, notes, stamps, nil
}

// keyLike names what secret is when it is a key written out, PEM or a JWK
// or JWK Set, and is "" otherwise. Such a file is refused as an HMAC
// secret: it is usually the issuer's public key, and with a public key as
// the secret anyone who can read it signs HS256 tokens the gate accepts.
func keyLike(secret []byte) string {
	s := bytes.TrimSpace(secret)
	if bytes.HasPrefix(s, []byte("-----BEGIN")) {
		return "a PEM block"
	}
	var obj map[string]json.RawMessage
	if len(s) > 0 && s[0] == '{' && json.Unmarshal(s, &obj) == nil {
		if _, ok := obj["kty"]; ok {
			return "a JWK"
		}
		if _, ok := obj["keys"]; ok {
			return "a JWK Set"
		}
	}
	return ""
}

// keyFiles holds the keys read from the configured files and re-reads them
// when a file changes, so that a key is rotated without a restart: the new
// key is added next to the old one, the issuer moves to it, the old one is
// removed once its last token has expired. Keys that stay keep their id, so
// the tokens cached under them stay cached; tokens cached under a removed
// key are verified anew.
type keyFiles struct {
	v     *Verifier
	files []keyFile
	keys  atomic.Pointer[[]verifyKey]

	mu     sync.Mutex // serialises reloads; guards stamps
	stamps []os.FileInfo

	stopc chan struct{}
	wg    sync.WaitGroup
}

func newKeyFiles(v *Verifier, files []keyFile, keys []verifyKey, stamps []os.FileInfo) *keyFiles {
	f := &keyFiles{v: v, files: files, stamps: stamps, stopc: make(chan struct{})}
	for i := range keys {
		keys[i].id = v.nextID()
	}
	f.keys.Store(&keys)
	return f
}

// current returns the keys in use.
func (f *keyFiles) current() []verifyKey {
	if f == nil {
		return nil
	}
	return *f.keys.Load()
}

// holds reports whether the key with id is in use.
func (f *keyFiles) holds(id uint64) bool {
	for _, k := range f.current() {
		if k.id == id {
			return true
		}
	}
	return false
}

// changed reports whether a file's stamp differs from the one it was read
// with: another file behind the name, another size or modification time.
func (f *keyFiles) changed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, kf := range f.files {
		st, err := os.Stat(kf.path)
		if err != nil {
			return true // reload says why, once per change
		}
		old := f.stamps[i]
		if !os.SameFile(old, st) || old.Size() != st.Size() || !old.ModTime().Equal(st.ModTime()) {
			return true
		}
	}
	return false
}

// reload re-reads every file. On an error the keys in use stay and the
// error is returned; the stamps stay too, so the next look tries again.
func (f *keyFiles) reload() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	keys, notes, stamps, err := readKeyFiles(f.files)
	if err != nil {
		return err
	}
	old := f.current()
	added, kept := 0, 0
next:
	for i := range keys {
		for j := range old {
			if keys[i].same(&old[j]) {
				keys[i].id = old[j].id
				kept++
				continue next
			}
		}
		keys[i].id = f.v.nextID()
		added++
	}
	f.stamps = stamps
	f.keys.Store(&keys)
	if added > 0 || kept != len(old) {
		f.v.log.Info("auth: key files re-read", "keys", len(keys), "added", added, "removed", len(old)-kept)
		logNotes(f.v.log, notes)
	}
	return nil
}

// watch looks at the files every interval (0: keyFileCheck; negative:
// never) until stop.
func (f *keyFiles) watch(interval time.Duration) {
	if interval == 0 {
		interval = keyFileCheck
	}
	if interval < 0 {
		return
	}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		var failed error // the last failure logged, so a broken file warns once per change
		for {
			select {
			case <-f.stopc:
				return
			case <-t.C:
			}
			if !f.changed() {
				continue
			}
			err := f.reload()
			switch {
			case err == nil:
				failed = nil
			case failed == nil || failed.Error() != err.Error():
				failed = err
				f.v.log.Warn("auth: key files changed but cannot be read; keeping the keys in use", "err", err)
			}
		}
	}()
}

func (f *keyFiles) stop() {
	close(f.stopc)
	f.wg.Wait()
}

// Reload re-reads the secret and key files at once (the gate calls it on
// SIGHUP). On an error the keys in use stay. Without key files it does
// nothing.
func (v *Verifier) Reload() error {
	if v.files == nil {
		return nil
	}
	if err := v.files.reload(); err != nil {
		return errors.Unwrap(err)
	}
	return nil
}

// holds reports whether the key with id is still configured: in a key file
// or in the JWK Set.
func (v *Verifier) holds(id uint64) bool {
	return v.files != nil && v.files.holds(id) || v.jwks != nil && v.jwks.holds(id)
}
