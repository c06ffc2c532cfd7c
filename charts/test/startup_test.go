package charttest

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// kubeletDefaultMode is the mode of a projected Secret or ConfigMap item
// when neither the item nor the volume names one.
const kubeletDefaultMode = 0o644

// TestStartsAsGateUser starts the built binary the way the kubelet starts the
// gate container of a rendered pod: every Secret and ConfigMap item the gate
// mounts becomes a file with the ownership and mode the kubelet gives it, and
// the process runs with the container's user and group and the pod's
// supplemental groups (fsGroup included), never as root. The gate must serve
// /healthz. A mount the gate's user cannot read fails here, as it would
// crash-loop the pod, while check-config run as root passes.
func TestStartsAsGateUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files the kubelet's ownership and to start the gate as another user")
	}
	bin := gateBinaryForAnyUser(t)
	for _, tc := range []struct {
		name string
		pod  func(t *testing.T) *corev1.PodTemplateSpec
	}{
		// The sidecar recipe: the including chart's pod sets no fsGroup.
		{"sidecar recipe", appPod(`{}`)},
		{"sidecar recipe, key from a Secret", appPod(`{wsgate: {gate: {auth: {jwtHmacSecret: {existingSecret: ""}, jwtKey: {existingSecret: chat-jwks}}}}}`)},
		{"sidecar recipe, key from a ConfigMap", appPod(`{wsgate: {gate: {auth: {jwtKey: {existingConfigMap: chat-jwks}}}}}`)},
		{"sidecar recipe, native", appPod(`{wsgate: {sidecar: {native: true}}}`)},
		{"standalone", standalonePod("auth-hmac-values.yaml", ``)},
		{"standalone without fsGroup", standalonePod("auth-hmac-values.yaml", `{podSecurityContext: {fsGroup: null}}`)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tpl := tc.pod(t)
			g := findGate(t, &tpl.Spec, gateContainer)
			if len(g.C.VolumeMounts) == 0 {
				t.Fatalf("the gate mounts nothing: the case tests no file mode")
			}
			startAsKubelet(t, bin, &tpl.Spec, g.C)
		})
	}
}

// appPod renders testdata/app (the sidecar recipe) with override.
func appPod(override string) func(t *testing.T) *corev1.PodTemplateSpec {
	return func(t *testing.T) *corev1.PodTemplateSpec {
		t.Helper()
		m, err := tryRender(t, appChart(t), values(t, "testdata/app/values.yaml", override), true)
		if err != nil {
			t.Fatal(err)
		}
		return &m.get(t, "Deployment", "ci-legacy-chat").(*appsv1.Deployment).Spec.Template
	}
}

// standalonePod renders a ci values file of charts/wsgate with override.
func standalonePod(file, override string) func(t *testing.T) *corev1.PodTemplateSpec {
	return func(t *testing.T) *corev1.PodTemplateSpec {
		t.Helper()
		m := render(t, filepath.Join(chartDir, "ci", file), renderOpts{overrides: []string{override}})
		return &m.get(t, "Deployment", "ci-wsgate").(*appsv1.Deployment).Spec.Template
	}
}

// gateBinaryForAnyUser copies the binary under test into a folder every user
// may enter: the test's own temporary folders are root's alone.
func gateBinaryForAnyUser(t *testing.T) string {
	t.Helper()
	dir := worldDir(t)
	src, err := os.ReadFile(wsgateBin)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "wsgate")
	if err := os.WriteFile(bin, src, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// worldDir makes a folder that any user may enter and read, removed at the
// end of the test.
func worldDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "wsgate-kubelet")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// startAsKubelet projects the gate's mounts, starts bin with the container's
// arguments (its ports moved to free loopback ones) and credentials, and
// waits for /healthz.
func startAsKubelet(t *testing.T, bin string, spec *corev1.PodSpec, c *corev1.Container) {
	t.Helper()
	root := worldDir(t)
	var fsGroup *int64
	var groups []uint32
	if psc := spec.SecurityContext; psc != nil {
		fsGroup = psc.FSGroup
		if fsGroup != nil {
			groups = append(groups, uint32(*fsGroup))
		}
		for _, g := range psc.SupplementalGroups {
			groups = append(groups, uint32(g))
		}
	}
	uid, gid := containerIDs(t, spec, c)

	var mounts [][2]string
	for _, vm := range c.VolumeMounts {
		dir := filepath.Join(root, vm.Name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		i := slices.IndexFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == vm.Name })
		if i < 0 {
			t.Fatalf("mount %s has no volume", vm.Name)
		}
		v := spec.Volumes[i]
		var items []corev1.KeyToPath
		var defaultMode *int32
		switch {
		case v.Secret != nil:
			items, defaultMode = v.Secret.Items, v.Secret.DefaultMode
		case v.ConfigMap != nil:
			items, defaultMode = v.ConfigMap.Items, v.ConfigMap.DefaultMode
		default:
			t.Fatalf("volume %s: neither a Secret nor a ConfigMap", v.Name)
		}
		for _, it := range items {
			mode := int32(kubeletDefaultMode)
			switch {
			case it.Mode != nil:
				mode = *it.Mode
			case defaultMode != nil:
				mode = *defaultMode
			}
			projectItem(t, filepath.Join(dir, it.Path), os.FileMode(mode), fsGroup)
		}
		mounts = append(mounts, [2]string{vm.MountPath, dir})
	}
	rewrite := func(s string) string {
		for _, m := range mounts {
			if i := strings.Index(s, m[0]+"/"); i >= 0 {
				s = s[:i] + m[1] + s[i+len(m[0]):]
			}
		}
		return s
	}

	listen, admin := freeAddr(t), freeAddr(t)
	args := []string{}
	for _, a := range c.Args {
		switch {
		case strings.HasPrefix(a, "--listen="):
			a = "--listen=" + listen
		case strings.HasPrefix(a, "--admin-listen="):
			a = "--admin-listen=" + admin
		}
		args = append(args, rewrite(a))
	}
	env := []string{"PATH=/usr/bin:/bin"}
	for _, e := range c.Env {
		v := rewrite(e.Value)
		if e.ValueFrom != nil {
			// A Redis nobody serves: the gate starts degraded, as it may.
			v = "redis://:s3cret@127.0.0.1:1/0"
		}
		env = append(env, e.Name+"="+v)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Dir = root
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: groups}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-exited
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case err := <-exited:
			t.Fatalf("the gate (uid %d, gid %d, groups %v) exited: %v\n%s", uid, gid, groups, err, out.String())
		default:
		}
		if healthy(admin) {
			stop()
			return
		}
		if time.Now().After(deadline) {
			stop()
			t.Fatalf("no /healthz within 20s:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// projectItem writes one projected item as the kubelet leaves it: owned by
// root; with a pod fsGroup, its group is fsGroup and it is group-readable
// (the kubelet adds 0440 to read-only volumes' files).
func projectItem(t *testing.T, path string, mode os.FileMode, fsGroup *int64) {
	t.Helper()
	if err := os.WriteFile(path, []byte(fakeContent(path)), 0o600); err != nil {
		t.Fatal(err)
	}
	gid := 0
	if fsGroup != nil {
		gid = int(*fsGroup)
		mode |= 0o440
	}
	if err := os.Chown(path, 0, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// containerIDs is the user and group the container runs as: its own
// securityContext, else the pod's.
func containerIDs(t *testing.T, spec *corev1.PodSpec, c *corev1.Container) (uid, gid uint32) {
	t.Helper()
	var u, g *int64
	if psc := spec.SecurityContext; psc != nil {
		u, g = psc.RunAsUser, psc.RunAsGroup
	}
	if sc := c.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			u = sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			g = sc.RunAsGroup
		}
	}
	if u == nil || *u == 0 {
		t.Fatalf("the gate would run as root")
	}
	if g == nil {
		// The image's USER 65532:65532.
		g = u
	}
	return uint32(*u), uint32(*g)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return "127.0.0.1:" + strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}

func healthy(admin string) bool {
	res, err := http.Get(fmt.Sprintf("http://%s/healthz", admin))
	if err != nil {
		return false
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, res.Body)
	return res.StatusCode == http.StatusOK
}
