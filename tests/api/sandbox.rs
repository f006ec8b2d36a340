//! The script sandbox under real dispatch: an adapter whose script loops for ever, recurses
//! without end or grows a string without bound fails only the payments that reach that code,
//! each with a clear error, while the others are paid; `eval` and `import` are refused when a
//! script is loaded (and so by hot reload, with file, line and column).

use std::time::{Duration, Instant};

use crate::helpers::{payment, spawn_with, status};

/// Runaway code in the MTN adapter, selected by payee.
const TRAPS: &str = r#"fn build_request(p, ctx) {
    let payee = if p.fa == () { "" } else { p.fa.id };
    if payee == "256700000901" { loop { } }
    if payee == "256700000902" { return deep(0); }
    if payee == "256700000903" { let s = "x"; loop { s += s; } }
    mapped_request(p, ctx)
}

fn deep(n) { deep(n + 1) + 1 }

fn mapped_request(p, ctx) {"#;

#[tokio::test]
async fn runaway_scripts_fail_their_payment_with_a_clear_error_and_stall_nothing() {
    let app = spawn_with(Default::default(), |_, dir| {
        let path = dir.join("adapters/mtn-momo/adapter.rhai");
        let text = std::fs::read_to_string(&path).expect("read");
        let text = text.replacen("fn build_request(p, ctx) {", TRAPS, 1);
        std::fs::write(&path, text).expect("write");
    })
    .await;
    let cases = [
        ("loop", "256700000901", "Too many operations"),
        ("recursion", "256700000902", "Stack overflow"),
        ("string", "256700000903", "Length of string"),
    ];
    let mut payments: Vec<_> = cases
        .iter()
        .map(|(r, n, _)| payment(r, &format!("mobile:{n}@mtn"), "1.00"))
        .collect();
    payments.extend((0..20).map(|i| {
        payment(
            &format!("fine-{i}"),
            &format!("mobile:2567000010{i:02}@mtn"),
            "1.00",
        )
    }));
    let started = Instant::now();
    let batch = app.submit("sandbox", payments).await;
    let all = app.wait_final(&batch).await;
    // Each runaway call is stopped by the operation budget or the 250 ms deadline.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    for (reference, _, words) in cases {
        let p = &all[reference];
        assert_eq!(status(p), "failed", "{reference}: {p}");
        assert_eq!(p["reason_code"], "script_error", "{reference}: {p}");
        let reason = p["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("adapter.rhai")
                && reason.to_lowercase().contains(&words.to_lowercase()),
            "{reference}: {reason}"
        );
        let id = p["id"].as_str().expect("id");
        assert_eq!(
            app.sim.simulator.stats().submissions.get(id),
            None,
            "{reference} sent"
        );
    }
    for i in 0..20 {
        let p = &all[format!("fine-{i}").as_str()];
        assert_eq!(status(p), "succeeded", "{p}");
    }
}

#[tokio::test]
async fn eval_and_import_are_refused_when_a_script_is_loaded_live() {
    let app = spawn_with(Default::default(), |_, _| {}).await;
    let path = app.dir.path().join("rules/routing.rhai");
    let original = std::fs::read_to_string(&path).expect("read");
    let reloader = app.app.state.reloader.clone();
    for (n, (line, word)) in [
        ("    let x = eval(\"40 + 2\");", "eval"),
        ("    import \"os\" as os;", "import"),
    ]
    .into_iter()
    .enumerate()
    {
        let edited = original.replacen(
            "fn route(p, ctx) {",
            &format!("fn route(p, ctx) {{\n{line}"),
            1,
        );
        let tmp = path.with_extension("tmp~");
        std::fs::write(&tmp, edited).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
        let deadline = Instant::now() + Duration::from_secs(5);
        while reloader.status().refused as usize <= n {
            assert!(Instant::now() < deadline, "the {word} edit was not refused");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let problem = reloader.status().problems[0].clone();
        assert!(problem.file.ends_with("routing.rhai"), "{problem:?}");
        assert!(problem.message.contains(word), "{problem:?}");
        assert!(problem.line > 1, "{problem:?}");
    }
    assert_eq!(reloader.status().applied, 0);
    let batch = app
        .submit(
            "after-refusals",
            vec![payment("p", "mobile:256700000001@mtn", "1")],
        )
        .await;
    assert_eq!(status(&app.wait_final(&batch).await["p"]), "succeeded");
}
