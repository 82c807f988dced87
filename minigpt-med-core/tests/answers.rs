//! The box parser on every form MiniGPT-Med emits, and on hostile text.

use minigpt_med::{Answer, BoundingBox};

type Found = Vec<(Option<String>, [u32; 4])>;

fn grids(text: &str) -> Found {
    Answer::parse_boxes(text, 100, 100).into_iter().map(|b| (b.label, b.grid)).collect()
}

fn l(s: &str) -> Option<String> {
    Some(s.to_owned())
}

#[test]
fn parses_every_form_the_model_writes() {
    let cases: Vec<(&str, Found)> = vec![
        ("<p>pneumonia</p> {<12><34><56><78>}", vec![(l("pneumonia"), [12, 34, 56, 78])]),
        (
            "<p>tumor</p> {<1><2><3><4>}<delim>{<5><6><7><8>}",
            vec![(l("tumor"), [1, 2, 3, 4]), (l("tumor"), [5, 6, 7, 8])],
        ),
        (
            "<p>left lung</p> {<0><0><50><100>} <p>heart</p> {<40><40><60><70>}",
            vec![(l("left lung"), [0, 0, 50, 100]), (l("heart"), [40, 40, 60, 70])],
        ),
        ("{<20><15><48><70>}", vec![(None, [20, 15, 48, 70])]),
        ("the nodule is at {<5><6><7><8>}.", vec![(None, [5, 6, 7, 8])]),
        // Grounded caption: phrases with and without boxes.
        (
            "a <p>nodule</p> {<10><10><20><20>} in the <p>right lung</p> and no effusion",
            vec![(l("nodule"), [10, 10, 20, 20])],
        ),
        ("no boxes here", vec![]),
    ];
    for (text, want) in cases {
        assert_eq!(grids(text), want, "{text:?}");
    }
}

#[test]
fn documented_behaviour_on_odd_values() {
    // Over 100: clamped. Swapped corners: reordered. Negative: clamped to 0.
    assert_eq!(grids("{<120><5><3><250>}"), vec![(None, [3, 5, 100, 100])]);
    assert_eq!(grids("{<-5><80><10><20>}"), vec![(None, [0, 20, 10, 80])]);
    // Pixels use the image's own width and height.
    let b = &Answer::parse_boxes("{<10><20><50><100>}", 640, 480)[0];
    assert_eq!(b.pixels, [64.0, 96.0, 320.0, 480.0]);
}

#[test]
fn malformed_groups_are_skipped_without_panicking() {
    let hostile = [
        "{<1><2><3>}",
        "{<1><2><3><4><5>}",
        "{<a><b><c><d>}",
        "{<1><2><3><4>",
        "<p>unterminated {<1><2><3><4>}",
        "<p></p> {<1><2><3><4>}",
        "{{{{<1><2><3><4>}}}}",
        "{<99999999999999999999><1><2><3>}",
        "<p><p><p>",
        "}{<}{>}{",
        "\u{FFFD}{<\u{FFFD}>}",
        "{<1><2><3><4>}<delim>",
        "<delim><delim>{<",
        "",
    ];
    // What each should give, worked out by hand from the documented rules: only a complete
    // group of four integers that fit in i64 makes a box.
    let want: [usize; 14] = [0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0];
    assert_eq!(hostile.len(), want.len());
    for (text, n) in hostile.iter().zip(want) {
        let boxes = Answer::parse_boxes(text, 10, 10);
        assert_eq!(boxes.len(), n, "{text:?}: {boxes:?}");
        for b in boxes {
            assert_eq!(b.grid, [1, 2, 3, 4], "{text:?}");
            let want = [0.1, 0.2, 0.3, 0.4];
            assert!(b.pixels.iter().zip(want).all(|(p, w)| (p - w).abs() < 1e-12), "{text:?}: {:?}", b.pixels);
        }
    }
    assert_eq!(grids("{<1><2><3>} {<1><2><3><4>}"), vec![(None, [1, 2, 3, 4])]);
    assert_eq!(grids("{<1><2><3><4>"), vec![]);
    assert_eq!(grids("<p></p> {<1><2><3><4>}"), vec![(l(""), [1, 2, 3, 4])]);
    assert_eq!(grids("{{<1><2><3><4>}"), vec![(None, [1, 2, 3, 4])]);
    // A label followed by a malformed group, then a good one: the good one keeps the label.
    assert_eq!(grids("<p>x</p> {<1>}<delim>{<1><2><3><4>}"), vec![(l("x"), [1, 2, 3, 4])]);
}

#[test]
fn boxes_serialize_as_the_cli_prints_them() {
    let b = BoundingBox { label: Some("nodule".into()), grid: [1, 2, 3, 4], pixels: [1.5, 2.0, 3.0, 4.0] };
    let v = serde_json::to_value(&b).unwrap();
    assert_eq!(v, serde_json::json!({"label": "nodule", "grid": [1, 2, 3, 4], "pixels": [1.5, 2.0, 3.0, 4.0]}));
}
