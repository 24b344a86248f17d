//! `lb-lab SCENARIO.yaml [--agent-arg ARG]... [--human]` (run by `cargo xtask lab`).

#[expect(unsafe_code, reason = "geteuid through libc")]
fn main() {
    let mut args = std::env::args().skip(1);
    let mut scenario = None;
    let mut agent_args = Vec::new();
    let mut human = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--human" => human = true,
            "--agent-arg" => match args.next() {
                Some(v) => agent_args.push(v),
                None => {
                    eprintln!("lab: --agent-arg needs a value");
                    std::process::exit(2);
                }
            },
            s if s.starts_with("--agent-arg=") => {
                agent_args.push(s["--agent-arg=".len()..].to_string())
            }
            s if s.starts_with('-') => {
                eprintln!(
                    "lab: unknown flag `{s}`; usage: lb-lab SCENARIO.yaml [--agent-arg ARG]... [--human]"
                );
                std::process::exit(2);
            }
            s => scenario = Some(std::path::PathBuf::from(s)),
        }
    }
    let Some(scenario) = scenario else {
        eprintln!("usage: lb-lab SCENARIO.yaml [--agent-arg ARG]... [--human]");
        std::process::exit(2);
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("lab: set-up needs root (network namespaces, cgroups, BPF)");
        std::process::exit(1);
    }
    std::process::exit(lb_tests::lab::run(&lb_tests::lab::Options {
        scenario,
        agent_args,
        human,
    }));
}
