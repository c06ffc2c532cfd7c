package charttest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// wsgateBin is the binary the chart must agree with: $WSGATE_BIN, or one
// built from the repository by TestMain.
var wsgateBin string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	if bin := os.Getenv("WSGATE_BIN"); bin != "" {
		abs, err := filepath.Abs(bin)
		if err == nil {
			_, err = os.Stat(abs)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "WSGATE_BIN=%s: %v\n", bin, err)
			return 1
		}
		wsgateBin = abs
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "wsgate-chart-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	wsgateBin = filepath.Join(dir, "wsgate")
	build := exec.Command("go", "build", "-o", wsgateBin, ".")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "WSGATE_BIN unset and building the binary failed: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// fakeSecrets stand in for the values Kubernetes would take from Secrets.
var fakeSecrets = map[string]string{
	"WSGATE_REDIS_URL": "redis://:s3cret@redis-master.chat.svc:6379/0",
}

// fakeKeyFile is the content of every mounted Secret and ConfigMap item
// but an HMAC secret's: check-config reads them as start does, and a JWK
// Set with one public key is a valid key file.
const fakeKeyFile = `{"keys":[{"kty":"EC","crv":"P-256","kid":"chart-test",` +
	`"x":"fIxSR3FKFOmcRguTfDwiM45pti8eCIgNzf-Ora2mb-M","y":"fk5al5n_UPg4g0eiq3T_H4QeBbYXdHeLxkPqUvnuigk"}]}`

// fakeHMACSecret is an HMAC secret's content (the gate refuses a key
// given as a secret).
const fakeHMACSecret = "chart-test-secret-of-32-bytes-ok"

// fakeContent is what a mounted item at path holds: an HMAC secret under
// the chart's HMAC secret volume, else fakeKeyFile.
func fakeContent(path string) string {
	if strings.Contains(path, "jwt-hmac") {
		return fakeHMACSecret
	}
	return fakeKeyFile
}

// checkConfig runs `wsgate check-config` with the gate container's rendered
// arguments and environment, the way the pod would start it. Mounted Secret
// and ConfigMap items become files under a temporary folder holding
// fakeKeyFile (the paths in arguments and environment are rewritten to
// them); env taken from Secrets gets a fake value of the right shape. It returns the exit code and output.
func checkConfig(t *testing.T, spec *corev1.PodSpec, c *corev1.Container, extraEnv ...string) (int, string) {
	t.Helper()
	tmp := t.TempDir()
	var mounts [][2]string // mountPath -> local folder
	for _, vm := range c.VolumeMounts {
		local := filepath.Join(tmp, vm.Name)
		if err := os.MkdirAll(local, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, v := range spec.Volumes {
			if v.Name != vm.Name {
				continue
			}
			var items []corev1.KeyToPath
			var data map[string]string // what the chart itself renders
			switch {
			case v.Secret != nil:
				items = v.Secret.Items
			case v.ConfigMap != nil:
				items = v.ConfigMap.Items
				if d, ok := renderedConfigMaps.Load(v.ConfigMap.Name); ok {
					data = d.(map[string]string)
				}
			}
			for _, it := range items {
				content, ok := data[it.Key]
				if !ok {
					content = fakeContent(vm.Name)
				}
				if err := os.WriteFile(filepath.Join(local, it.Path), []byte(content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
		}
		mounts = append(mounts, [2]string{vm.MountPath, local})
	}
	rewrite := func(s string) string {
		for _, m := range mounts {
			if i := strings.Index(s, m[0]+"/"); i >= 0 {
				s = s[:i] + m[1] + s[i+len(m[0]):]
			}
		}
		return s
	}
	args := []string{"check-config"}
	for _, a := range c.Args {
		args = append(args, rewrite(a))
	}
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + tmp}
	for _, e := range c.Env {
		var v string
		switch {
		case e.ValueFrom == nil:
			v = rewrite(e.Value)
		case e.ValueFrom.SecretKeyRef != nil:
			var ok bool
			if v, ok = fakeSecrets[e.Name]; !ok {
				v = "secret-value"
			}
		case e.ValueFrom.FieldRef != nil:
			v = "field-value"
		default:
			v = "1"
		}
		env = append(env, e.Name+"="+v)
	}
	env = append(env, extraEnv...)
	cmd := exec.Command(wsgateBin, args...)
	cmd.Env = env
	done := make(chan struct{})
	timer := time.AfterFunc(30*time.Second, func() {
		select {
		case <-done:
		default:
			_ = cmd.Process.Kill()
		}
	})
	out, err := cmd.CombinedOutput()
	close(done)
	timer.Stop()
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("run %s: %v", wsgateBin, err)
		}
		code = ee.ExitCode()
	}
	return code, strings.TrimSpace(string(out))
}

// gatePods yields the pod specs in a render that hold the gate.
func gatePods(m manifests) []*corev1.PodTemplateSpec {
	var out []*corev1.PodTemplateSpec
	for _, d := range m.all("Deployment") {
		tpl := &d.Obj.(*appsv1.Deployment).Spec.Template
		for _, c := range slices.Concat(tpl.Spec.Containers, tpl.Spec.InitContainers) {
			if c.Name == gateContainer {
				out = append(out, tpl)
				break
			}
		}
	}
	return out
}

// TestCheckConfig: the binary accepts what every ci values file renders.
func TestCheckConfig(t *testing.T) {
	for _, file := range ciValuesFiles(t) {
		t.Run(filepath.Base(file), func(t *testing.T) {
			t.Parallel()
			m := render(t, file, renderOpts{})
			pods := gatePods(m)
			if len(pods) == 0 && lookup(values(t, file), "standalone.enabled", true).(bool) {
				t.Fatal("no pod with the gate")
			}
			for _, tpl := range pods {
				g := findGate(t, &tpl.Spec, gateContainer)
				if code, out := checkConfig(t, &tpl.Spec, g.C); code != 0 || out != "" {
					t.Errorf("wsgate check-config %v: exit %d: %s", g.C.Args, code, out)
				}
			}
		})
	}
}

// TestCheckConfigRejects: values the schema lets through but the binary
// refuses fail here, with one line naming the flag: the harness really runs
// the rendered configuration, through args and env alike.
func TestCheckConfigRejects(t *testing.T) {
	file := filepath.Join(chartDir, "ci", "default-values.yaml")
	for _, tc := range []struct {
		override string
		env      []string
		want     string
	}{
		{`{gate: {clientIp: {proxyProtocol: true}}}`, nil, "--proxy-protocol"},
		{`{gate: {limits: {userRate: 5/0s}}}`, nil, "--user-rate"},
		{`{gate: {protocol: {maxHeaderBytes: 10B}}}`, nil, "--max-header-bytes"},
		{`{trustedProxies: [not-a-cidr]}`, nil, "--trusted-proxies"},
		{`{extraArgs: ["--no-such-flag=1"]}`, nil, "no-such-flag"},
		{`{extraEnv: [{name: WSGATE_JWT_KEY_FILE, value: /nonexistent/key.pem}]}`, nil, "--jwt-key-file"},
		{`{gate: {redis: {timeout: 0s}}}`, nil, "--redis-timeout"},
	} {
		t.Run(tc.override, func(t *testing.T) {
			t.Parallel()
			m, err := tryRender(t, wsgateChart(t), values(t, file, tc.override), true)
			if err != nil {
				t.Fatal(err)
			}
			tpl := gatePods(m)[0]
			g := findGate(t, &tpl.Spec, gateContainer)
			code, out := checkConfig(t, &tpl.Spec, g.C, tc.env...)
			if code != 2 || !strings.Contains(out, tc.want) || strings.Count(out, "\n") > 0 {
				t.Errorf("exit %d, output %q: want exit 2 and one line naming %s", code, out, tc.want)
			}
		})
	}
}

// helpFlag is one flag of `wsgate --help`.
type helpFlag struct {
	Name, Env, Default string
	HasDefault         bool
}

var helpLine = regexp.MustCompile(`^\s+--([a-z0-9-]+)\b.*\[\$(WSGATE_[A-Z0-9_]+)\]\s*$`)
var helpDefault = regexp.MustCompile(`\(default: (.*)\) \[\$WSGATE_`)

// binaryFlags parses the flags of `wsgate --help`.
func binaryFlags(t *testing.T) []helpFlag {
	t.Helper()
	out, err := exec.Command(wsgateBin, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("wsgate --help: %v\n%s", err, out)
	}
	var flags []helpFlag
	for _, line := range strings.Split(string(out), "\n") {
		m := helpLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		f := helpFlag{Name: m[1], Env: m[2]}
		if d := helpDefault.FindStringSubmatch(line); d != nil {
			f.HasDefault = true
			f.Default = d[1]
			if u, err := strconv.Unquote(f.Default); err == nil {
				f.Default = u
			}
		}
		if want := "WSGATE_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_")); f.Env != want {
			t.Errorf("--%s: env %s, want %s", f.Name, f.Env, want)
		}
		flags = append(flags, f)
	}
	if len(flags) < 40 {
		t.Fatalf("parsed only %d flags from wsgate --help:\n%s", len(flags), out)
	}
	return flags
}

// TestEveryFlagReachable: each flag of `wsgate --help` is set by
// ci/all-flags-values.yaml, through an argument or its WSGATE_* variable, so
// every flag is settable from values.
//
// --rules-file and the rule flags exclude each other, so the rules file is
// reached by ci/rules-values.yaml.
func TestEveryFlagReachable(t *testing.T) {
	reached := map[string]bool{}
	for _, file := range []string{"all-flags-values.yaml", "rules-values.yaml"} {
		m := render(t, filepath.Join(chartDir, "ci", file), renderOpts{})
		tpl := gatePods(m)[0]
		g := findGate(t, &tpl.Spec, gateContainer)
		for _, e := range g.C.Env {
			reached[e.Name] = true
		}
		for name := range g.Args {
			reached["--"+name] = true
			if !strings.Contains(strings.Join(g.C.Args, " "), "--"+name+"=") {
				t.Errorf("--%s is not in --flag=value form", name)
			}
		}
	}
	for _, f := range binaryFlags(t) {
		if !reached["--"+f.Name] && !reached[f.Env] {
			t.Errorf("--%s (%s) is not reachable from values", f.Name, f.Env)
		}
	}
}

// TestDefaultsMatchBinary: values.yaml's defaults are the binary's own, so
// rendering them explicitly changes nothing.
func TestDefaultsMatchBinary(t *testing.T) {
	m := render(t, filepath.Join(chartDir, "ci", "default-values.yaml"), renderOpts{})
	tpl := gatePods(m)[0]
	g := findGate(t, &tpl.Spec, gateContainer)
	for _, f := range binaryFlags(t) {
		got, ok := g.Args[f.Name]
		if !ok || !f.HasDefault {
			continue
		}
		v := got[len(got)-1]
		if v == f.Default {
			continue
		}
		dv, err1 := time.ParseDuration(v)
		df, err2 := time.ParseDuration(f.Default)
		if err1 == nil && err2 == nil && dv == df {
			continue
		}
		t.Errorf("values.yaml renders --%s=%s, the binary's default is %s", f.Name, v, f.Default)
	}
}
