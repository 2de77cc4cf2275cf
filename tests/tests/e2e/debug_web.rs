//! The debug web UI in a real headless Chromium, driven over WebDriver
//! (chromedriver), against a real stack: calls go through the data plane, a
//! policy changes them, the control plane records them in SQLite, and the
//! pages show them.
//!
//! Needs Chromium and chromedriver (Debian: `apt-get install -y chromium
//! chromium-driver`); `CHROME` and `CHROMEDRIVER` override where they are
//! looked for. Without them these tests fail, saying so. Set
//! `LUTHIEN_UI_SCREENSHOTS=<dir>` to keep a screenshot of each page.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client as WebDriver, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use luthien_tests::databases::TestDatabase;
use luthien_tests::stack::ControlPlane;
use luthien_tests::{Client, Stack, StackOptions};
use serde_json::{Value, json};

/// Rewrites "fox" to "cat" both ways and upper-cases the answer, so both
/// halves of a call change at word level.
const POLICY: &str = r#"
policies:
  - type: string_replace
    name: fox-to-cat
    config:
      replacements: [{from: "fox", to: "cat"}]
      apply_to: both
  - type: all_caps
"#;

/// How long the page may take to show something.
const UI_TIMEOUT: Duration = Duration::from_secs(15);

const INSTALL_HINT: &str = "the debug web UI tests drive a real headless Chromium through \
     chromedriver; `bash .ci/test` installs both (Debian/Ubuntu: `apt-get install -y chromium \
     chromium-driver`), or point CHROME and CHROMEDRIVER at them";

// ---- The browser -------------------------------------------------------------------------

/// A headless Chromium behind its own chromedriver; both end with the value.
struct Browser {
    client: WebDriver,
    _driver: Driver,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let chromium = find_program("CHROME", &["chromium", "chromium-browser", "google-chrome"]);
        let chromedriver = find_program("CHROMEDRIVER", &["chromedriver"]);
        let profile = tempfile::tempdir().expect("browser profile dir");
        let mut attempts = 0;
        let (driver, url) = loop {
            attempts += 1;
            let port = free_port();
            let child = Command::new(&chromedriver)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own process group, so the browser it starts can be ended with it.
                .process_group(0)
                .spawn()
                .unwrap_or_else(|error| {
                    panic!(
                        "cannot run {}: {error}; {INSTALL_HINT}",
                        chromedriver.display()
                    )
                });
            let mut driver = Driver(Some(child));
            let url = format!("http://127.0.0.1:{port}");
            if wait_until_ready(port, &mut driver).await {
                break (driver, url);
            }
            assert!(attempts < 3, "chromedriver did not start; {INSTALL_HINT}");
        };
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    // Without these Chromium waits on network services this machine cannot reach.
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1440,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
            .unwrap_or_else(|error| {
                panic!("chromedriver cannot start Chromium ({error}); {INSTALL_HINT}")
            });
        Browser {
            client,
            _driver: driver,
            _profile: profile,
        }
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the page.
    async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .expect("script runs")
    }

    /// Polls `script` until it returns something truthy, and returns that.
    async fn wait_for(&self, what: &str, script: &str, args: Vec<Value>) -> Value {
        let deadline = tokio::time::Instant::now() + UI_TIMEOUT;
        loop {
            let value = self.js(script, args.clone()).await;
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::String(text) => !text.is_empty(),
                Value::Number(number) => number.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return value;
            }
            if tokio::time::Instant::now() > deadline {
                let page = self
                    .js("return document.body.innerText.slice(0, 3000)", vec![])
                    .await;
                panic!(
                    "timed out waiting for {what}; the page shows:\n{}",
                    page.as_str().unwrap_or("")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|error| panic!("no element {css}: {error}"))
    }

    /// Types into the element that has the focus (keys like Enter as `\u{e007}`).
    async fn type_keys(&self, keys: &str) {
        let focused = self.client.active_element().await.expect("focused element");
        focused.send_keys(keys).await.expect("type");
    }

    async fn current_url(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("current url")
            .to_string()
    }

    /// Saves a screenshot when `LUTHIEN_UI_SCREENSHOTS` names a directory.
    async fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("LUTHIEN_UI_SCREENSHOTS") else {
            return;
        };
        let png = self.client.screenshot().await.expect("screenshot");
        let path = Path::new(&dir).join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        eprintln!("screenshot: {}", path.display());
    }

    /// Ends the WebDriver session, then chromedriver (see [`Driver`]).
    async fn quit(self) {
        let _ = self.client.clone().close().await;
    }
}

/// chromedriver, in its own process group. Dropping it ends the whole group,
/// so the Chromium it started goes too, however the test ends.
struct Driver(Option<Child>);

impl Drop for Driver {
    fn drop(&mut self) {
        let Some(mut child) = self.0.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn find_program(variable: &str, names: &[&str]) -> PathBuf {
    if let Some(path) = std::env::var_os(variable) {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{} not found on PATH; {INSTALL_HINT}", names.join(" / ")))
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("port").port()
}

/// Whether chromedriver on `port` answers `/status` (false if it exited or never did).
async fn wait_until_ready(port: u16, driver: &mut Driver) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        let exited = driver
            .0
            .as_mut()
            .is_none_or(|child| matches!(child.try_wait(), Ok(Some(_))));
        if exited {
            return false;
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            let url = format!("http://127.0.0.1:{port}/status");
            let status =
                luthien_tests::client::read(Client::new().send("GET", &url, &[], "").await).await;
            if status.status == 200 && status.json()["value"]["ready"] == true {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

// ---- The stack ---------------------------------------------------------------------------

async fn start_stack(database: &TestDatabase, admin_key: Option<&str>) -> Stack {
    Stack::start(StackOptions {
        database_url: Some(database.url.clone()),
        admin_key: admin_key.map(str::to_owned),
        ..StackOptions::yaml(POLICY)
    })
    .await
}

fn debug_url(stack: &Stack) -> String {
    stack
        .debug_http
        .clone()
        .expect("the stack serves the debug UI")
}

/// Makes an OpenAI call through the proxy and returns its id once the store
/// has it completed.
async fn recorded_call(
    stack: &Stack,
    model: &str,
    prompt: &str,
    stream: bool,
    admin_key: Option<&str>,
) -> String {
    let body = json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": prompt}]});
    let response = Client::new()
        .post(&stack.openai_url(), &[], body.to_string())
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let call_id = response
        .header("x-luthien-call-id")
        .expect("call id header")
        .to_owned();
    wait_recorded(stack, &call_id, admin_key).await;
    call_id
}

/// Waits until the store has `call_id` completed.
async fn wait_recorded(stack: &Stack, call_id: &str, admin_key: Option<&str>) {
    let url = format!("{}/debug/calls/{call_id}", debug_url(stack));
    let bearer = admin_key.map(|key| format!("Bearer {key}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|value| ("authorization", value.as_str()))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let detail =
            luthien_tests::client::read(Client::new().send("GET", &url, &headers, "").await).await;
        if detail.status == 200 && detail.json()["call"]["status"] == "completed" {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "call not recorded: {}",
            detail.text()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---- The diff viewer ---------------------------------------------------------------------

#[tokio::test]
async fn diff_viewer_shows_what_policies_changed_word_by_word() {
    let database = TestDatabase::sqlite().await;
    let stack = start_stack(&database, None).await;
    let first = recorded_call(
        &stack,
        "gpt-4o-mini",
        "Is the quick brown fox awake?",
        false,
        None,
    )
    .await;
    let second = recorded_call(&stack, "gpt-4o", "Where does the fox sleep?", true, None).await;
    let base = debug_url(&stack);
    let browser = Browser::start().await;

    // `/debug` leads to the viewer; the deep link opens the call.
    browser.goto(&format!("{base}/debug?call_id={first}")).await;
    wait_for_call(&browser, &first).await;
    assert!(
        browser
            .current_url()
            .await
            .ends_with(&format!("/debug/diff?call_id={first}"))
    );

    // The request: original and final text, the changed word struck and inserted.
    let request = browser
        .js(
            "const section = document.querySelector('section.request');
             const changed = section.querySelector('.pair.message.op-change');
             return {
               before: changed.querySelector('.side.before .text').textContent,
               after: changed.querySelector('.side.after .text').textContent,
               deleted: [...changed.querySelectorAll('.side.before del')].map(n => n.textContent),
               inserted: [...changed.querySelectorAll('.side.after ins')].map(n => n.textContent),
             };",
            vec![],
        )
        .await;
    assert_eq!(request["before"], "Is the quick brown fox awake?");
    assert_eq!(request["after"], "Is the quick brown cat awake?");
    assert_eq!(request["deleted"], json!(["fox"]), "{request}");
    assert_eq!(request["inserted"], json!(["cat"]), "{request}");

    // The response: upstream's text on the left, the upper-cased one on the right.
    let response = browser
        .js(
            "const section = document.querySelector('section.response');
             return {
               before: section.querySelector('.side.before .text').textContent,
               after: section.querySelector('.side.after .text').textContent,
               deleted: [...section.querySelectorAll('.side.before del')].map(n => n.textContent).join(' '),
               inserted: [...section.querySelectorAll('.side.after ins')].map(n => n.textContent).join(' '),
             };",
            vec![],
        )
        .await;
    let before = response["before"].as_str().unwrap();
    let after = response["after"].as_str().unwrap();
    assert!(
        before.starts_with("Hello from the mock upstream."),
        "{response}"
    );
    assert!(
        after.starts_with("HELLO FROM THE MOCK UPSTREAM."),
        "{response}"
    );
    assert!(
        response["deleted"].as_str().unwrap().contains("Hello"),
        "{response}"
    );
    assert!(
        response["inserted"].as_str().unwrap().contains("HELLO"),
        "{response}"
    );

    // The policy events and the metadata.
    let policies = browser
        .js(
            "return document.querySelector('table.policy-events').textContent",
            vec![],
        )
        .await;
    let policies = policies.as_str().unwrap();
    assert!(policies.contains("fox-to-cat"), "{policies}");
    assert!(policies.contains("replaced"), "{policies}");
    let meta = browser
        .js("return document.querySelector('.meta').textContent", vec![])
        .await;
    assert!(meta.as_str().unwrap().contains("gpt-4o-mini"), "{meta}");

    // Both calls are listed, newest first, each flagged as changed.
    let rows = browser
        .wait_for(
            "both calls in the list",
            "const rows = [...document.querySelectorAll('#calls-body tr')];
             return rows.length >= 2 && rows.map(r => ({id: r.dataset.callId, changed: !!r.querySelector('.badge.changed'), selected: r.classList.contains('selected')}));",
            vec![],
        )
        .await;
    assert_eq!(rows[0]["id"], json!(second), "{rows}");
    assert_eq!(rows[1]["id"], json!(first), "{rows}");
    assert_eq!(rows[1]["selected"], true, "{rows}");

    // Each row shows, as a request log does, the prompt as it went upstream and the policies
    // that acted on the call.
    let listed = browser
        .js(
            "const row = document.querySelector(`#calls-body tr[data-call-id='${arguments[0]}']`);
             return {
               preview: row.querySelector('.preview').textContent,
               acted: [...row.querySelectorAll('.acted .badge')].map(b => b.textContent),
               header: [...document.querySelectorAll('#calls thead th')].map(th => th.textContent),
             };",
            vec![json!(first)],
        )
        .await;
    assert_eq!(
        listed["preview"], "Is the quick brown cat awake?",
        "{listed}"
    );
    assert!(
        listed["acted"]
            .as_array()
            .unwrap()
            .contains(&json!("fox-to-cat")),
        "{listed}"
    );
    assert_eq!(
        listed["header"],
        json!([
            "Time",
            "Model",
            "Prompt · policies",
            "Status",
            "Duration",
            "Tokens"
        ])
    );
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .all(|row| row["changed"] == true),
        "{rows}"
    );

    // Raw JSON is there, collapsed, and renders on demand.
    browser
        .find("#raw > summary")
        .await
        .click()
        .await
        .expect("open raw JSON");
    browser
        .find("#raw .raw-part > summary")
        .await
        .click()
        .await
        .expect("open a part");
    browser
        .wait_for("raw JSON", "return document.querySelector('#raw .raw-part pre').textContent.includes(arguments[0])", vec![json!(first)])
        .await;
    browser.screenshot("debug-diff").await;

    // Clicking another call opens it and updates the URL.
    browser
        .find(&format!("#calls-body tr[data-call-id='{second}'] a"))
        .await
        .click()
        .await
        .expect("click the other call");
    wait_for_call(&browser, &second).await;
    assert!(
        browser
            .current_url()
            .await
            .ends_with(&format!("call_id={second}"))
    );
    let stream_meta = browser
        .js("return document.querySelector('.meta').textContent", vec![])
        .await;
    assert!(
        stream_meta.as_str().unwrap().contains("Streamyes"),
        "{stream_meta}"
    );

    // Keyboard: j moves down the list, Enter opens, / focuses the search.
    browser.type_keys("j").await;
    browser
        .wait_for(
            "focus on the next row",
            "return document.activeElement.closest('tr')?.dataset.callId === arguments[0]",
            vec![json!(first)],
        )
        .await;
    browser.type_keys("\u{e007}").await;
    wait_for_call(&browser, &first).await;
    browser.type_keys("/").await;
    let focused = browser.js("return document.activeElement.id", vec![]).await;
    assert_eq!(focused, "f-q");
    browser.type_keys(&first[first.len() - 8..]).await;
    browser
        .wait_for(
            "the search to narrow the list",
            "const rows = [...document.querySelectorAll('#calls-body tr')];
             return rows.length === 1 && rows[0].dataset.callId === arguments[0];",
            vec![json!(first)],
        )
        .await;

    browser.quit().await;
}

async fn wait_for_call(browser: &Browser, call_id: &str) {
    browser
        .wait_for(
            &format!("call {call_id} to be shown"),
            "return document.querySelector('#call-title')?.textContent.includes(arguments[0])
                && document.querySelector('section.response') !== null",
            vec![json!(call_id)],
        )
        .await;
}

/// A stack recording into its own SQLite store, the id of one call it recorded, and the
/// notices the diff viewer shows above that call.
struct Viewed {
    _database: TestDatabase,
    stack: Stack,
    call: String,
    notices: String,
}

/// Records one call on a stack with `options` and opens it in the diff viewer.
async fn recorded_call_notices(options: StackOptions) -> Viewed {
    let database = TestDatabase::sqlite().await;
    let stack = Stack::start(StackOptions {
        database_url: Some(database.url.clone()),
        ..options
    })
    .await;
    let call = recorded_call(
        &stack,
        "gpt-4o",
        "Is the quick brown fox awake?",
        false,
        None,
    )
    .await;
    let browser = Browser::start().await;
    browser
        .goto(&format!("{}/debug/diff?call_id={call}", debug_url(&stack)))
        .await;
    wait_for_call(&browser, &call).await;
    let notices = browser
        .js(
            "return [...document.querySelectorAll('.notice')].map(n => n.textContent).join('\\n')",
            vec![],
        )
        .await;
    let notices = notices.as_str().unwrap().to_owned();
    browser.quit().await;
    Viewed {
        _database: database,
        stack,
        call,
        notices,
    }
}

#[tokio::test]
async fn diff_viewer_flags_truncated_payloads() {
    let Viewed { notices, .. } = recorded_call_notices(StackOptions {
        max_payload_bytes: Some(64),
        ..StackOptions::yaml(POLICY)
    })
    .await;
    assert!(
        notices.contains("original request was too large to store"),
        "{notices}"
    );
    assert!(
        notices.contains("final response was too large to store"),
        "{notices}"
    );
}

/// With `--store-payloads final`, the page says the originals were not stored instead of
/// showing them as missing, and the replay says why it cannot run.
#[tokio::test]
async fn diff_viewer_says_what_was_not_stored() {
    let Viewed {
        _database,
        stack,
        call,
        notices,
    } = recorded_call_notices(StackOptions {
        store_payloads: luthien_store::redact::StoredPayloads::Final,
        ..StackOptions::yaml(POLICY)
    })
    .await;
    for side in ["original request", "original response"] {
        assert!(
            notices.contains(&format!(
                "The {side} was not stored (--store-payloads final)"
            )),
            "{notices}"
        );
    }
    let replay = luthien_tests::Client::new()
        .post(
            &format!("{}/debug/calls/{call}/replay", debug_url(&stack)),
            &[],
            "{}",
        )
        .await;
    assert_eq!(replay.status, 200, "{}", replay.text());
    let error = replay.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.contains("were not stored (--store-payloads final)"),
        "{error}"
    );
}

// ---- Replay ------------------------------------------------------------------------------

#[tokio::test]
async fn diff_viewer_replays_a_call_through_another_chain() {
    // The active chain comes from a file, so the page can show its YAML.
    let dir = tempfile::tempdir().expect("policy dir");
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, "policies: [{type: noop}]\n").expect("write policy file");
    let database = TestDatabase::sqlite().await;
    let stack = Stack::start(StackOptions {
        database_url: Some(database.url.clone()),
        control_plane: ControlPlane::File(path),
        ..StackOptions::default()
    })
    .await;
    let call = recorded_call(
        &stack,
        "gpt-4o-mini",
        "Is the quick brown fox awake?",
        false,
        None,
    )
    .await;
    let browser = Browser::start().await;
    browser
        .goto(&format!("{}/debug/diff?call_id={call}", debug_url(&stack)))
        .await;
    wait_for_call(&browser, &call).await;

    // The box starts with the active chain's YAML; replaying it changes nothing.
    browser
        .wait_for(
            "the active chain in the replay box",
            "return document.getElementById('replay-yaml').value.includes('type: noop')
                && document.getElementById('replay-active').textContent.includes('noop')",
            vec![],
        )
        .await;
    let same = replay(&browser, None).await;
    assert_eq!(same["state"], "done", "{same}");
    assert_eq!(same["changed"], "false", "{same}");
    assert_eq!(same["blocked"], "false", "{same}");
    assert!(
        same["verdict"].as_str().unwrap().contains("No change"),
        "{same}"
    );

    // Another chain: the request's "fox" becomes "cat", the answer is upper-cased.
    let changed = replay(
        &browser,
        Some(
            "policies: [{type: string_replace, config: {replacements: [{from: fox, to: cat}], apply_to: request}}, {type: all_caps}]",
        ),
    )
    .await;
    assert_eq!(changed["state"], "done", "{changed}");
    assert_eq!(changed["changed"], "true", "{changed}");
    assert_eq!(changed["blocked"], "false", "{changed}");
    assert!(
        changed["verdict"]
            .as_str()
            .unwrap()
            .contains("Would change this call"),
        "{changed}"
    );
    let diff = browser
        .js(
            "const result = document.getElementById('replay-result');
             const request = result.querySelector('section.replay-request .pair.message.op-change');
             const response = result.querySelector('section.replay-response');
             return {
               request_before: request.querySelector('.side.before .text').textContent,
               request_after: request.querySelector('.side.after .text').textContent,
               deleted: [...request.querySelectorAll('.side.before del')].map(n => n.textContent),
               inserted: [...request.querySelectorAll('.side.after ins')].map(n => n.textContent),
               response_before: response.querySelector('.side.before .text').textContent,
               response_after: response.querySelector('.side.after .text').textContent,
               shouted: [...response.querySelectorAll('.side.after ins')].map(n => n.textContent).join(' '),
               events: result.querySelector('.replay-events').textContent,
             };",
            vec![],
        )
        .await;
    assert_eq!(
        diff["request_before"], "Is the quick brown fox awake?",
        "{diff}"
    );
    assert_eq!(
        diff["request_after"], "Is the quick brown cat awake?",
        "{diff}"
    );
    assert_eq!(diff["deleted"], json!(["fox"]), "{diff}");
    assert_eq!(diff["inserted"], json!(["cat"]), "{diff}");
    assert!(
        diff["response_before"]
            .as_str()
            .unwrap()
            .starts_with("Hello from the mock upstream."),
        "{diff}"
    );
    assert!(
        diff["response_after"]
            .as_str()
            .unwrap()
            .starts_with("HELLO FROM THE MOCK UPSTREAM."),
        "{diff}"
    );
    assert!(
        diff["shouted"].as_str().unwrap().contains("HELLO"),
        "{diff}"
    );
    assert!(
        diff["events"].as_str().unwrap().contains("string_replace"),
        "{diff}"
    );
    browser.screenshot("debug-replay").await;

    // A chain that blocks the call says so, with the rule's reason.
    let blocked = replay(
        &browser,
        Some("policies: [{type: block, config: {rules: [{name: no-mini, models_deny: [gpt-4o-mini]}]}}]"),
    )
    .await;
    assert_eq!(blocked["state"], "done", "{blocked}");
    assert_eq!(blocked["blocked"], "true", "{blocked}");
    let verdict = blocked["verdict"].as_str().unwrap();
    assert!(verdict.contains("Would be blocked"), "{blocked}");
    assert!(verdict.contains("no-mini"), "{blocked}");

    // A bad chain: the server's message is shown, not swallowed.
    let rejected = replay(&browser, Some("policies: [{type: nope}]")).await;
    assert_eq!(rejected["state"], "error", "{rejected}");
    let message = browser
        .js(
            "const alert = document.querySelector('#replay-result .notice.error[role=alert]');
             return alert && {
               text: alert.textContent,
               message: alert.querySelector('.replay-error').textContent,
             };",
            vec![],
        )
        .await;
    assert!(
        message["text"]
            .as_str()
            .unwrap()
            .contains("The chain was rejected"),
        "{message}"
    );
    let message = message["message"].as_str().unwrap();
    assert!(message.contains("nope"), "{message}");
    assert!(message.contains("unknown policy type"), "{message}");
    assert!(
        message.contains("all_caps"),
        "lists the known types: {message}"
    );

    // The typed chain survives opening the call again; Reset brings the active one back.
    browser
        .find(&format!("#calls-body tr[data-call-id='{call}'] a"))
        .await
        .click()
        .await
        .expect("open the call again");
    browser
        .wait_for(
            "the call re-rendered with an empty result",
            "const result = document.getElementById('replay-result');
             const yaml = document.getElementById('replay-yaml');
             return result !== null && yaml !== null && result.dataset.state === undefined
                && yaml.dataset.activeLoaded === 'true';",
            vec![],
        )
        .await;
    let kept = browser
        .js(
            "return document.getElementById('replay-yaml').value",
            vec![],
        )
        .await;
    assert_eq!(kept, "policies: [{type: nope}]");
    browser
        .find("#replay-reset")
        .await
        .click()
        .await
        .expect("reset");
    let reset = browser
        .js(
            "return document.getElementById('replay-yaml').value",
            vec![],
        )
        .await;
    assert_eq!(reset, "policies: [{type: noop}]\n");
    browser.quit().await;
}

/// Replays the shown call from the diff page: with `yaml` typed into the
/// box (`None` keeps what is there), then returns the result area's state.
async fn replay(browser: &Browser, yaml: Option<&str>) -> Value {
    if let Some(yaml) = yaml {
        let input = browser.find("#replay-yaml").await;
        input.clear().await.expect("clear the replay box");
        input.send_keys(yaml).await.expect("type a chain");
        let typed = browser
            .js(
                "return document.getElementById('replay-yaml').value",
                vec![],
            )
            .await;
        assert_eq!(typed, yaml, "the box holds the chain");
    }
    browser
        .find("#replay-run")
        .await
        .click()
        .await
        .expect("click Replay");
    browser
        .wait_for(
            "the replay result",
            "const result = document.getElementById('replay-result');
             const state = result.dataset.state;
             return (state === 'done' || state === 'error') && {
               state,
               changed: result.dataset.changed ?? null,
               blocked: result.dataset.blocked ?? null,
               verdict: result.querySelector('.replay-verdict')?.textContent ?? null,
               text: result.textContent,
             };",
            vec![],
        )
        .await
}

// ---- The activity monitor ----------------------------------------------------------------

#[tokio::test]
async fn activity_monitor_pushes_calls_and_filters_them_live() {
    let database = TestDatabase::sqlite().await;
    let stack = start_stack(&database, None).await;
    let base = debug_url(&stack);
    let browser = Browser::start().await;
    browser.goto(&format!("{base}/debug/activity")).await;
    browser
        .wait_for(
            "the stream to connect",
            "return document.getElementById('connection').dataset.state === 'live'",
            vec![],
        )
        .await;

    // New calls appear without a reload, newest first.
    let alpha = recorded_call(&stack, "model-alpha", "fox one", false, None).await;
    wait_for_rows(&browser, &alpha, true).await;
    let beta = recorded_call(&stack, "model-beta", "fox two", true, None).await;
    wait_for_rows(&browser, &beta, true).await;
    let first_row = browser
        .js(
            "return document.querySelector('#events-body tr').dataset.callId",
            vec![],
        )
        .await;
    assert_eq!(first_row, json!(beta));
    let types = browser
        .js(
            "return [...document.querySelectorAll('#events-body tr')].filter(r => r.dataset.callId === arguments[0]).map(r => r.dataset.eventType)",
            vec![json!(alpha)],
        )
        .await;
    for event_type in ["request", "policy", "response"] {
        assert!(
            types.as_array().unwrap().contains(&json!(event_type)),
            "{types}"
        );
    }

    // A model filter hides what is shown and what arrives.
    browser
        .find("#f-model")
        .await
        .send_keys("alpha")
        .await
        .expect("type a model filter");
    wait_for_rows(&browser, &beta, false).await;
    wait_for_rows(&browser, &alpha, true).await;
    let gamma = recorded_call(&stack, "model-beta", "fox three", false, None).await;
    wait_for_rows(&browser, &gamma, false).await;
    browser.screenshot("debug-activity").await;
    browser
        .find("#f-model")
        .await
        .clear()
        .await
        .expect("clear the filter");
    browser
        .find("#f-model")
        .await
        .send_keys(" ")
        .await
        .expect("fire input");
    wait_for_rows(&browser, &gamma, true).await;

    // The event-type filter.
    browser
        .find("#f-event-type")
        .await
        .select_by_value("policy")
        .await
        .expect("choose policy events");
    browser
        .wait_for(
            "only policy events",
            "const shown = [...document.querySelectorAll('#events-body tr')].filter(r => !r.hidden);
             return shown.length > 0 && shown.every(r => r.dataset.eventType === 'policy');",
            vec![],
        )
        .await;
    browser
        .find("#f-event-type")
        .await
        .select_by_value("")
        .await
        .expect("any event type");

    // Paused: new events are counted, not shown, until resumed.
    browser.find("#pause").await.click().await.expect("pause");
    let delta = recorded_call(&stack, "model-alpha", "fox four", false, None).await;
    browser
        .wait_for("the paused count", "return /Resume \\([1-9]\\d* new\\)/.test(document.getElementById('pause').textContent)", vec![])
        .await;
    let shown = browser
        .js("return document.querySelector(`#events-body tr[data-call-id='${arguments[0]}']`) !== null", vec![json!(delta)])
        .await;
    assert_eq!(shown, false, "nothing is shown while paused");
    browser.find("#pause").await.click().await.expect("resume");
    wait_for_rows(&browser, &delta, true).await;

    // Grouped by call: one heading per call, the call with the latest event first, each
    // heading followed by that call's events only; a new call's group goes on top.
    browser
        .find("#f-group")
        .await
        .click()
        .await
        .expect("group by call");
    let grouping = "const rows = [...document.querySelectorAll('#events-body tr')];
         if (!rows.length || !rows[0].classList.contains('group-head')) return false;
         const groups = [];
         for (const row of rows) {
           if (row.classList.contains('group-head')) groups.push({id: row.dataset.callId, head: row.textContent, events: []});
           else groups.at(-1).events.push(row.dataset.callId);
         }
         return groups[0].id === arguments[0] && groups;";
    let groups = browser
        .wait_for("events grouped by call", grouping, vec![json!(delta)])
        .await;
    let groups = groups.as_array().unwrap();
    assert!(groups.len() >= 4, "alpha, beta, gamma, delta: {groups:?}");
    for group in groups {
        let events = group["events"].as_array().unwrap();
        assert!(events.len() >= 3, "request, policy, response: {group}");
        assert!(events.iter().all(|id| *id == group["id"]), "{group}");
        let head = group["head"].as_str().unwrap();
        assert!(head.contains(&format!("{} events", events.len())), "{head}");
    }
    assert!(browser.current_url().await.contains("group=call"));
    let epsilon = recorded_call(&stack, "model-beta", "fox five", true, None).await;
    browser
        .wait_for(
            "the new call's group on top",
            grouping,
            vec![json!(epsilon)],
        )
        .await;
    browser.screenshot("debug-activity-grouped").await;
    browser
        .find("#f-group")
        .await
        .click()
        .await
        .expect("ungroup");
    browser
        .wait_for(
            "the flat list again",
            "const rows = [...document.querySelectorAll('#events-body tr')];
             return rows.length > 0 && !document.querySelector('#events-body tr.group-head')
               && rows[0].dataset.callId === arguments[0];",
            vec![json!(epsilon)],
        )
        .await;

    // Each row links to the call in the diff viewer.
    browser
        .find(&format!("#events-body tr[data-call-id='{delta}'] a"))
        .await
        .click()
        .await
        .expect("follow the link");
    wait_for_call(&browser, &delta).await;
    browser.quit().await;
}

/// An Anthropic answer whose tool call a policy replaced with a text: the answer's two text
/// blocks read as two paragraphs (they once ran together as "….Tool call …").
/// A tool call replaced by text reads as a paragraph of its own after the assistant's text,
/// in Anthropic's text blocks and in the Responses API's output items (streamed).
#[tokio::test]
async fn diff_viewer_shows_replaced_tool_calls_as_paragraphs() {
    let database = TestDatabase::sqlite().await;
    let stack = Stack::start(StackOptions {
        database_url: Some(database.url.clone()),
        ..StackOptions::yaml(
            "policies:\n  - type: tool_call_filter\n    name: weather-filter\n    config:\n      rules: [{name: no-weather, tools: [get_weather]}]\n",
        )
    })
    .await;
    let prompt = "What is the weather in Paris?";
    let anthropic = (
        stack.anthropic_url(),
        json!({"model": "claude-sonnet-4-5", "max_tokens": 200,
            "messages": [{"role": "user", "content": prompt}]}),
    );
    let responses = (
        format!("{}/v1/responses", stack.proxy),
        json!({"model": "gpt-5", "stream": true, "input": [{"role": "user", "content": prompt}]}),
    );
    let browser = Browser::start().await;
    for (url, body) in [anthropic, responses] {
        let response = Client::new()
            .post(
                &url,
                &[
                    ("anthropic-version", "2023-06-01"),
                    ("x-mock-scenario", "text_and_tools"),
                ],
                body.to_string(),
            )
            .await;
        assert_eq!(response.status, 200, "{}", response.text());
        let call_id = response
            .header("x-luthien-call-id")
            .expect("call id")
            .to_owned();
        wait_recorded(&stack, &call_id, None).await;

        browser
            .goto(&format!(
                "{}/debug/diff?call_id={call_id}",
                debug_url(&stack)
            ))
            .await;
        wait_for_call(&browser, &call_id).await;
        let after = browser
            .js(
                "return document.querySelector('section.response .side.after .text').textContent",
                vec![],
            )
            .await;
        let after = after.as_str().unwrap();
        let (text, replacement) = after
            .split_once("\n\n")
            .unwrap_or_else(|| panic!("two paragraphs in {url}: {after:?}"));
        assert!(!text.is_empty(), "{after:?}");
        assert_eq!(
            replacement,
            "Tool call get_weather was blocked by policy: no-weather"
        );
        let listed = browser
            .wait_for(
                "the call in the list",
                "const row = document.querySelector(`#calls-body tr[data-call-id='${arguments[0]}']`);
                 return row && {preview: row.querySelector('.preview').textContent,
                                acted: [...row.querySelectorAll('.acted .badge')].map(b => b.textContent)};",
                vec![json!(call_id)],
            )
            .await;
        assert_eq!(listed["preview"], prompt);
        assert_eq!(listed["acted"], json!(["weather-filter"]));
        let name = if url.ends_with("/responses") {
            "debug-responses-output"
        } else {
            "debug-anthropic-blocks"
        };
        browser.screenshot(name).await;
    }
    browser.quit().await;
}

/// Waits until `call_id` has rows, all of them shown (`visible`) or all hidden.
async fn wait_for_rows(browser: &Browser, call_id: &str, visible: bool) {
    browser
        .wait_for(
            &format!("rows of {call_id} {}", if visible { "shown" } else { "hidden" }),
            "const rows = [...document.querySelectorAll('#events-body tr')].filter(r => r.dataset.callId === arguments[0]);
             return rows.some(r => r.dataset.eventType === 'response') && rows.every(r => r.hidden !== arguments[1]);",
            vec![json!(call_id), json!(visible)],
        )
        .await;
}

// ---- The admin key -----------------------------------------------------------------------

#[tokio::test]
async fn an_admin_key_brings_up_a_login_form() {
    const KEY: &str = "correct-horse-battery";
    let database = TestDatabase::sqlite().await;
    let stack = start_stack(&database, Some(KEY)).await;
    let call = recorded_call(&stack, "gpt-4o", "secret fox", false, Some(KEY)).await;
    let base = debug_url(&stack);
    let browser = Browser::start().await;

    browser
        .goto(&format!("{base}/debug/diff?call_id={call}"))
        .await;
    browser
        .wait_for(
            "the login form",
            "return document.querySelector('dialog#login[open]') !== null",
            vec![],
        )
        .await;
    let leaked = browser
        .js(
            "return document.querySelectorAll('#calls-body tr').length",
            vec![],
        )
        .await;
    assert_eq!(leaked, 0, "no data before login");
    browser.screenshot("debug-login").await;

    // A wrong key is refused and the form stays.
    browser
        .find("#login-key")
        .await
        .send_keys("not-the-key")
        .await
        .expect("type");
    browser
        .find("#login-submit")
        .await
        .click()
        .await
        .expect("submit");
    browser
        .wait_for(
            "the wrong-key message",
            "return document.getElementById('login-error').textContent.includes('Wrong key')",
            vec![],
        )
        .await;
    let open = browser
        .js(
            "return document.querySelector('dialog#login[open]') !== null",
            vec![],
        )
        .await;
    assert_eq!(open, true);

    // The right key lets the page load its data.
    browser
        .find("#login-key")
        .await
        .clear()
        .await
        .expect("clear");
    browser
        .find("#login-key")
        .await
        .send_keys(KEY)
        .await
        .expect("type");
    browser
        .find("#login-submit")
        .await
        .click()
        .await
        .expect("submit");
    wait_for_call(&browser, &call).await;
    let open = browser
        .js(
            "return document.querySelector('dialog#login') !== null",
            vec![],
        )
        .await;
    assert_eq!(open, false, "the form is gone");
    browser
        .wait_for("the call in the list", "return document.querySelector(`#calls-body tr[data-call-id='${arguments[0]}']`) !== null", vec![json!(call)])
        .await;

    // Replay posts with the same login: no dialog, an answer (an empty box
    // replays through the active chain, which made this call what it is).
    browser
        .wait_for(
            "the active chain to be read",
            "return document.getElementById('replay-yaml').dataset.activeLoaded === 'true'",
            vec![],
        )
        .await;
    let replayed = replay(&browser, None).await;
    assert_eq!(replayed["state"], "done", "{replayed}");
    assert_eq!(replayed["changed"], "false", "{replayed}");
    assert!(
        replayed["verdict"]
            .as_str()
            .unwrap()
            .contains("the active chain"),
        "{replayed}"
    );
    let dialog = browser
        .js(
            "return document.querySelector('dialog#login') !== null",
            vec![],
        )
        .await;
    assert_eq!(dialog, false, "no second login for the replay");

    // The login holds for the activity stream too.
    browser.goto(&format!("{base}/debug/activity")).await;
    browser
        .wait_for(
            "the stream to connect",
            "return document.getElementById('connection').dataset.state === 'live'",
            vec![],
        )
        .await;
    let next = recorded_call(&stack, "gpt-4o", "another fox", false, Some(KEY)).await;
    wait_for_rows(&browser, &next, true).await;
    let dialog = browser
        .js(
            "return document.querySelector('dialog#login') !== null",
            vec![],
        )
        .await;
    assert_eq!(dialog, false);
    browser.quit().await;
}
