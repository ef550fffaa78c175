use super::*;

fn env_of(vars: &[(&str, &str)]) -> Result<Option<DistEnv>, DistError> {
    DistEnv::from_lookup(|name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    })
}

const TORCHRUN: [(&str, &str); 5] = [
    ("RANK", "3"),
    ("WORLD_SIZE", "8"),
    ("LOCAL_RANK", "1"),
    ("MASTER_ADDR", "10.1.2.3"),
    ("MASTER_PORT", "29400"),
];

#[test]
fn plain_process_is_none() {
    assert_eq!(env_of(&[]).unwrap(), None);
    assert_eq!(
        env_of(&[("SLURM_JOB_ID", "7"), ("RANK", " ")]).unwrap(),
        None
    );
}

#[test]
fn torchrun_variables() {
    let env = env_of(&TORCHRUN).unwrap().unwrap();
    assert_eq!(
        env,
        DistEnv {
            rank: 3,
            world_size: 8,
            local_rank: 1,
            master_addr: "10.1.2.3".into(),
            master_port: 29400,
            launcher: Launcher::Torchrun,
        }
    );
    let cfg = env.config(Backend::Gloo, Duration::from_secs(5));
    assert_eq!((cfg.rank, cfg.world_size, cfg.master_port), (3, 8, 29400));
}

#[test]
fn torchrun_wins_over_slurm() {
    let mut vars = TORCHRUN.to_vec();
    vars.extend([
        ("SLURM_PROCID", "0"),
        ("SLURM_NTASKS", "2"),
        ("SLURM_LOCALID", "0"),
    ]);
    assert_eq!(env_of(&vars).unwrap().unwrap().launcher, Launcher::Torchrun);
}

#[test]
fn torchrun_errors_name_the_variable() {
    let missing = env_of(&TORCHRUN[..4]).unwrap_err();
    assert!(
        matches!(
            missing,
            DistError::MissingEnv {
                var: "MASTER_PORT",
                ..
            }
        ),
        "{missing}"
    );
    let mut vars = TORCHRUN.to_vec();
    vars[1] = ("WORLD_SIZE", "eight");
    let bad = env_of(&vars).unwrap_err();
    assert!(
        matches!(
            bad,
            DistError::BadEnv {
                var: "WORLD_SIZE",
                ..
            }
        ),
        "{bad}"
    );
    assert!(bad.to_string().contains("\"eight\""), "{bad}");
    vars[1] = ("WORLD_SIZE", "3");
    let rank = env_of(&vars).unwrap_err();
    assert!(
        rank.to_string()
            .contains("rank 3 is not below the world size 3"),
        "{rank}"
    );
    vars[1] = ("WORLD_SIZE", "8");
    vars[4] = ("MASTER_PORT", "70000");
    assert!(matches!(
        env_of(&vars).unwrap_err(),
        DistError::BadEnv {
            var: "MASTER_PORT",
            ..
        }
    ));
}

#[test]
fn slurm_variables_with_node_list_and_default_port() {
    let env = env_of(&[
        ("SLURM_PROCID", "5"),
        ("SLURM_NTASKS", "16"),
        ("SLURM_LOCALID", "1"),
        ("SLURM_JOB_NODELIST", "gpu-node[01-04,07],login2"),
    ])
    .unwrap()
    .unwrap();
    assert_eq!((env.rank, env.world_size, env.local_rank), (5, 16, 1));
    assert_eq!(env.master_addr, "gpu-node01");
    assert_eq!(env.master_port, DEFAULT_MASTER_PORT);
    assert_eq!(env.launcher, Launcher::Slurm);
}

#[test]
fn slurm_step_list_and_master_overrides() {
    let base = [
        ("SLURM_PROCID", "0"),
        ("SLURM_NTASKS", "2"),
        ("SLURM_LOCALID", "0"),
        ("SLURM_JOB_NODELIST", "a[1-9]"),
        ("SLURM_STEP_NODELIST", "b[3-4]"),
    ];
    assert_eq!(env_of(&base).unwrap().unwrap().master_addr, "b3");
    let mut vars = base.to_vec();
    vars.extend([("MASTER_ADDR", "head"), ("MASTER_PORT", "12345")]);
    let env = env_of(&vars).unwrap().unwrap();
    assert_eq!((env.master_addr.as_str(), env.master_port), ("head", 12345));
}

#[test]
fn slurm_errors_name_the_variable() {
    let no_list = env_of(&[
        ("SLURM_PROCID", "0"),
        ("SLURM_NTASKS", "2"),
        ("SLURM_LOCALID", "0"),
    ]);
    assert!(matches!(
        no_list.unwrap_err(),
        DistError::MissingEnv {
            var: "SLURM_JOB_NODELIST",
            ..
        }
    ));
    let no_tasks = env_of(&[
        ("SLURM_PROCID", "0"),
        ("SLURM_LOCALID", "0"),
        ("SLURM_NODELIST", "n1"),
    ]);
    assert!(matches!(
        no_tasks.unwrap_err(),
        DistError::MissingEnv {
            var: "SLURM_NTASKS",
            ..
        }
    ));
    let bad = env_of(&[
        ("SLURM_PROCID", "0"),
        ("SLURM_NTASKS", "2"),
        ("SLURM_LOCALID", "0"),
        ("SLURM_NODELIST", "n[1-2"),
    ]);
    assert!(matches!(
        bad.unwrap_err(),
        DistError::BadEnv {
            var: "SLURM_NODELIST",
            ..
        }
    ));
}

#[test]
fn node_lists() {
    let cases = [
        ("node[01-04,07]", Some("node01")),
        ("node07", Some("node07")),
        ("a1,b2", Some("a1")),
        ("node[007,9-12],gpu[1-2]", Some("node007")),
        ("rack[1-2]-n[05-06]", Some("rack1-n05")),
        ("  host-a  ", Some("host-a")),
        ("n[3]", Some("n3")),
        ("", None),
        ("n[1-2", None),
        ("n]1", None),
        ("n[]", None),
        ("n[a-b]", None),
        ("n[[1]]", None),
    ];
    for (list, want) in cases {
        assert_eq!(first_host(list).as_deref(), want, "{list:?}");
    }
}
