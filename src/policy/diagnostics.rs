//! Problems and warnings in a policy directory as diagnostics a person
//! reads: file, line and column, the text at fault underlined, and Cedar's
//! help where it has some.

use std::fmt;

use miette::{
    Diagnostic, GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, Severity,
};

use super::Problem;

/// One problem ready for miette's renderer.
#[derive(Debug)]
struct Shown<'a> {
    problem: &'a Problem,
    /// The message, with the file named in front when no snippet will name
    /// it.
    message: String,
    severity: Severity,
    source: Option<NamedSource<String>>,
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for Shown<'_> {}

impl Diagnostic for Shown<'_> {
    fn severity(&self) -> Option<Severity> {
        Some(self.severity)
    }

    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.problem
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source.as_ref().map(|s| s as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let (offset, len) = self.problem.span?;
        self.source.as_ref()?;
        Some(Box::new(std::iter::once(LabeledSpan::new(
            None,
            offset,
            len.max(1),
        ))))
    }
}

/// Renders `problem` for a terminal (`color`) or a plain file. The file is
/// read again to show the text at fault; a file that cannot be read is
/// named without a snippet.
pub fn render(problem: &Problem, severity: Severity, color: bool) -> String {
    let name = problem.file.display().to_string();
    let source = problem
        .span
        .and_then(|_| std::fs::read_to_string(&problem.file).ok())
        .map(|text| NamedSource::new(name.clone(), text));
    let message = match (&source, problem.line) {
        (Some(_), _) => problem.message.clone(),
        (None, Some(line)) => format!("{name}:{line}: {}", problem.message),
        (None, None) => format!("{name}: {}", problem.message),
    };
    let shown = Shown {
        problem,
        message,
        severity,
        source,
    };
    let theme = if color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let mut out = String::new();
    // Rendering into a String cannot fail for lack of space; a formatting
    // error would only lose this one diagnostic's decoration.
    let _ = GraphicalReportHandler::new_themed(theme)
        .with_width(120)
        .render_report(&mut out, &shown);
    out
}
