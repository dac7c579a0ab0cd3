// Command kubecp is a multi-call binary holding a small Kubernetes control plane for tests:
// etcd (embedded), kube-apiserver, kube-controller-manager, kubectl, and for a real node the
// kubelet, kube-scheduler and kube-proxy. One link of the shared Kubernetes packages is much
// cheaper to build than seven separate binaries.
//
// Usage: kubecp etcd|apiserver|controller-manager|scheduler|kubelet|proxy|kubectl|version [args...]
// The sub-command may also be taken from the program name (a symlink named kubectl).
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	_ "time/tzdata" // CronJob time zones, as in the upstream mains

	_ "k8s.io/client-go/plugin/pkg/client/auth" // client auth plugins for kubectl
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	"k8s.io/component-base/version"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

const usage = "usage: kubecp etcd|apiserver|controller-manager|scheduler|kubelet|proxy|kubectl|version [args...]"

// aliases maps every accepted name of a sub-command to its canonical name.
var aliases = map[string]string{
	"etcd":                    "etcd",
	"apiserver":               "apiserver",
	"kube-apiserver":          "apiserver",
	"controller-manager":      "controller-manager",
	"kube-controller-manager": "controller-manager",
	"scheduler":               "scheduler",
	"kube-scheduler":          "scheduler",
	"kubelet":                 "kubelet",
	"proxy":                   "proxy",
	"kube-proxy":              "proxy",
	"kubectl":                 "kubectl",
	"version":                 "version",
}

func main() {
	name, args := selectCommand(os.Args)
	if name == "" {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	// Each upstream command reads os.Args itself (cobra, kubectl plugins): make it look like
	// the command was started under its own name.
	os.Args = append([]string{name}, args...)
	// Construct only the selected command: NewAPIServerCommand installs a signal handler that
	// panics when set up twice in one process.
	switch name {
	case "etcd":
		os.Exit(runEtcd(args))
	case "apiserver":
		os.Exit(cli.Run(apiserver.NewAPIServerCommand()))
	case "controller-manager":
		os.Exit(cli.Run(controllermanager.NewControllerManagerCommand()))
	case "scheduler":
		os.Exit(cli.Run(scheduler.NewSchedulerCommand()))
	case "kubelet":
		os.Exit(cli.Run(kubelet.NewKubeletCommand(context.Background())))
	case "proxy":
		os.Exit(cli.Run(proxy.NewProxyCommand()))
	case "kubectl":
		logs.GlogSetter(kubectlcmd.GetLogVerbosity(os.Args)) //nolint:errcheck
		if err := cli.RunNoErrOutput(kubectlcmd.NewDefaultKubectlCommand()); err != nil {
			kubectlutil.CheckErr(err)
		}
	case "version":
		fmt.Printf("kubernetes %s, etcd %s\n", version.Get().GitVersion, etcdVersion())
	}
}

// selectCommand picks the sub-command from the program name or the first argument.
func selectCommand(argv []string) (string, []string) {
	if len(argv) == 0 {
		return "", nil
	}
	if name, ok := aliases[strings.TrimSuffix(filepath.Base(argv[0]), ".exe")]; ok {
		return name, argv[1:]
	}
	if len(argv) < 2 {
		return "", nil
	}
	if name, ok := aliases[argv[1]]; ok {
		return name, argv[2:]
	}
	return "", nil
}
