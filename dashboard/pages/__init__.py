"""The dashboard's pages, in the order of the navigation. A page is a module here (see dashboard.page) and a line
in PAGES: the list registers the pages on every app and gives the navigation, the "Open this image on ..." links
and the explanations their pages."""

from dashboard.pages import clustering, compare, duplicates, embeddings, gallery, image_sets, patches, similarity, why

PAGES = (gallery.PAGE, clustering.PAGE, similarity.PAGE, why.PAGE, duplicates.PAGE, embeddings.PAGE, patches.PAGE,
         compare.PAGE, image_sets.PAGE)
